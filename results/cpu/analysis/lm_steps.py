"""Induction and sink scores of every checkpoint of the study byte LM (one process).

  python results/cpu/analysis/lm_steps.py /tmp/lm_study [NAME [SEQ_LEN]]

For each checkpoint step of the workdir (skipping steps already done) runs, with the analysis
CLI, into results/cpu/analysis/NAME/steps/<step>/ (NAME: default lm_bytes_study; SEQ_LEN:
default 129, i.e. copies of 64 bytes):
  induction                 16 x [BOS, r, r], r (SEQ_LEN - 1) / 2 random printable ASCII bytes
                            (32..126);
  induction_repeated_data   16 x [BOS, w, w], w the first bytes of validation windows;
  sinks                     on the same random repeated ASCII sequences;
  icl.json                  mean next-byte loss (nats) on the first and on the second copy of
                            [BOS, w, w] (w as above): an induction circuit makes the second
                            copy much cheaper than the first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from attnlab.analysis import __main__ as cli

HERE = os.path.dirname(os.path.abspath(__file__))
def main(workdir: str, name: str = "lm_bytes_study", seq_len: str = "129") -> None:
  common = ["--batch", "16", "--seq-len", str(int(seq_len))]
  ckpts = os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
  for step in steps:
    out = os.path.join(HERE, name, "steps", str(step))
    if os.path.exists(os.path.join(out, "sinks.json")):
      continue
    src = ["--workdir", workdir, "--step", str(step), "--out", out] + common
    cli.main(["induction", *src, "--inputs", "repeated", "--token-range", "32,127"])
    cli.main(["induction", *src, "--inputs", "repeated-data", "--out", out + "_data"])
    png = os.path.join(out, "induction_repeated_data.png")
    shutil.move(os.path.join(out + "_data", "induction.png"), png)
    with open(os.path.join(out + "_data", "induction.json")) as f:
      record = dict(json.load(f), plot=png)
    with open(os.path.join(out, "induction_repeated_data.json"), "w") as f:
      json.dump(record, f, indent=1)
    shutil.rmtree(out + "_data")
    cli.main(["sinks", *src, "--inputs", "repeated", "--token-range", "32,127"])
    icl(workdir, step, out, common)


def icl(workdir: str, step: int, out: str, common: list[str]) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from attnlab import analysis  # pylint: disable=g-import-not-at-top
  from attnlab.analysis import loading  # pylint: disable=g-import-not-at-top
  args = cli._parser().parse_args(  # pylint: disable=protected-access
      ["induction", "--workdir", workdir, *common, "--inputs", "repeated-data"])
  model, info = loading.load_workdir(workdir, step=step)
  tokens, targets, _, what = cli._inputs(model, info, args)  # pylint: disable=protected-access
  half = (tokens.shape[1] - 1) // 2
  nll = np.zeros(tokens.shape, np.float64)
  lp = np.asarray(analysis.run(model, tokens), np.float64)
  lp = lp - lp.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  nll[:, :-1] = -np.take_along_axis(lp[:, :-1], targets[:, :-1, None], -1)[..., 0]
  first = nll[:, 1:half].mean()  # predicting bytes 2..half of the first copy
  second = nll[:, half + 1:2 * half].mean()  # bytes 2..half of the second copy
  with open(os.path.join(out, "icl.json"), "w") as f:
    json.dump({"step": step, "inputs": what, "loss_first_copy": first,
               "loss_second_copy": second}, f, indent=1)


if __name__ == "__main__":
  main(*sys.argv[1:4])
