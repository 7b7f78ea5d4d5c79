"""Next-byte loss on the first and second copy of repeated random printable strings.

  python results/cpu/analysis/icl_random.py WORKDIR STEP OUT.json [L ...]

For each copy length L (default 16 24 32): 16 inputs [BOS=0, r, r], r L random bytes in
32..126 (numpy seed 0); mean next-byte loss (nats) over bytes 2..L of each copy (the first
byte of a copy cannot be predicted from context). An induction circuit makes the second copy
cheap; chance is ln 95 = 4.55 nats.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from attnlab import analysis
from attnlab.analysis import loading


def main(workdir: str, step: str, out: str, *lengths: str) -> None:
  model, _ = loading.load_workdir(workdir, step=int(step))
  rows = []
  for length in [int(x) for x in lengths] or [16, 24, 32]:
    r = np.random.default_rng(0).integers(32, 127, size=(16, length))
    tokens = np.concatenate([np.zeros((16, 1), np.int64), r, r], 1).astype(np.int32)
    lp = np.asarray(analysis.run(model, tokens), np.float64)
    lp = lp - lp.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]  # predicts t + 1
    rows.append({"copy_length": length, "loss_first_copy": float(nll[:, 1:length].mean()),
                 "loss_second_copy": float(nll[:, length + 1:].mean())})
  with open(out, "w") as f:
    json.dump({"workdir": workdir, "step": int(step), "chance_nats": float(np.log(95)),
               "rows": rows}, f, indent=1)
  print(json.dumps(rows))


if __name__ == "__main__":
  main(*sys.argv[1:])
