"""Compare mechanisms on MQAR under one budget: a table and a plot of accuracy vs step.

  python -m attnlab.train.compare --workdir runs/mqar_compare [--steps 600] [--names a b ...]

Each mechanism trains ``configs/mechanisms.py:<name>`` (the MQAR config plus the catalogue
entry's overrides) for the same number of steps, batch and eval schedule, in its own
``WORKDIR/<name>``. A finished run is not repeated (its metrics are reused) and a stopped one
resumes from its checkpoint. Writes ``WORKDIR/summary.md``, ``WORKDIR/summary.json`` and
``WORKDIR/accuracy.png``; a mechanism that fails is reported in the table, not fatal.

Needs a source checkout (it reads ``configs/mechanisms.py`` beside the package), as after
the README's ``pip install -e .``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mechanisms.py"


def load_config(name: str, local: bool = False):
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms", _CONFIGS)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(name + (",local" if local else ""))


def run_one(name: str, workdir: Path, steps: int, eval_every: int, local: bool) -> dict:
  from attnlab.train import trainer
  from attnlab.train.metrics import read_metrics
  config = load_config(name, local)
  with config.unlocked():
    config.total_steps = steps
    config.eval_every = eval_every
    config.log_every = min(config.log_every, eval_every)
    config.checkpoint_every = steps
  t0 = time.time()
  done = (workdir / "metrics.jsonl").exists() and any(
      r.get("step") == steps and "eval/accuracy" in r for r in read_metrics(workdir))
  if not done:
    trainer.train_and_evaluate(config, str(workdir))
  records = read_metrics(workdir)
  evals = [r for r in records if "eval/accuracy" in r]
  final = evals[-1] if evals else {}
  return {"mechanism": name, "final_accuracy": final.get("eval/accuracy"),
          "best_accuracy": max((r["eval/accuracy"] for r in evals), default=None),
          "final_eval_loss": final.get("eval/loss"), "steps": steps,
          "wall_s": None if done else round(time.time() - t0, 1)}


def plot_accuracy(root: Path, names: list[str], title: str) -> Path:
  """One line per mechanism (best first), legend outside the axes; ``root/accuracy.png``."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from attnlab.train.metrics import read_metrics
  from attnlab.train.plot import series
  fig, ax = plt.subplots(figsize=(12, 6))
  cmap = plt.get_cmap("tab20")
  for i, name in enumerate(names):
    xs, ys = series(read_metrics(root / name), "eval/accuracy")
    ax.plot(xs, ys, marker="o", ms=3, lw=2.2 if i < 3 else 1.0, color=cmap(i % 20),
            ls="-" if i < 20 else "--", label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("eval accuracy (answer positions)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=2, fontsize=8)
  fig.tight_layout()
  out = root / "accuracy.png"
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m attnlab.train.compare", description=__doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--eval_every", type=int, default=100)
  p.add_argument("--names", nargs="*", default=None)
  p.add_argument("--local", action="store_true", help="tiny configs (smoke test)")
  a = p.parse_args(argv)
  import attnlab
  import attnlab.nn  # noqa: F401  (registers module-level mechanisms)
  names = a.names or attnlab.list_mechanisms()
  unknown = sorted(set(names) - set(attnlab.list_mechanisms()))
  if unknown:
    p.error(f"unknown mechanisms {unknown}; known: {attnlab.list_mechanisms()}")
  root = Path(a.workdir)
  root.mkdir(parents=True, exist_ok=True)
  rows = []
  for i, name in enumerate(names):
    print(f"[{i + 1}/{len(names)}] {name}", flush=True)
    try:
      rows.append(run_one(name, root / name, a.steps, a.eval_every, a.local))
    except Exception as e:  # one failing mechanism must not hide the others
      traceback.print_exc()
      rows.append({"mechanism": name,
                   "error": " ".join(f"{type(e).__name__}: {e}".split())[:200]})
  rows.sort(key=lambda r: -(r.get("final_accuracy") or -1))
  lines = [f"MQAR, {a.steps} steps each, same config apart from the mechanism.", "",
           "| mechanism | final eval accuracy | best eval accuracy | final eval loss | wall s |",
           "|---|---|---|---|---|"]
  fmt = lambda x: "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
  for r in rows:
    if "error" in r:
      lines.append(f"| `{r['mechanism']}` | failed: {r['error']} | | | |")
    else:
      lines.append(f"| `{r['mechanism']}` | {fmt(r['final_accuracy'])} | "
                   f"{fmt(r['best_accuracy'])} | {fmt(r['final_eval_loss'])} | "
                   f"{fmt(r['wall_s'])} |")
  (root / "summary.md").write_text("\n".join(lines) + "\n")
  (root / "summary.json").write_text(json.dumps(rows, indent=2))
  ok = [r["mechanism"] for r in rows if "error" not in r]
  if ok:
    plot_accuracy(root, ok, f"MQAR eval accuracy vs step ({a.steps} steps each)")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
