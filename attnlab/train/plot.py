"""Plot ``metrics.jsonl`` curves to a PNG (matplotlib, Agg backend; no display needed).

  python -m attnlab.train.plot DIR [DIR ...] [--out curves.png] [--keys train/loss eval/loss]
      [--labels softmax sigmoid] [--logy]

One subplot per key; one line per workdir (labelled by ``--labels`` or the folder name).
Default keys: ``train/loss`` and whichever of ``eval/loss``, ``eval/accuracy``,
``eval/bits_per_byte`` the runs have. Default output: ``DIR/curves.png`` for one workdir,
``curves.png`` otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from attnlab.train.metrics import read_metrics

DEFAULT_KEYS = ("train/loss", "eval/loss", "eval/accuracy", "eval/bits_per_byte")


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  xs, ys = [], []
  for r in records:
    v = r.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      xs.append(int(r["step"]))
      ys.append(float(v))
  return xs, ys


def plot(workdirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
         keys: Sequence[str] | None = None, labels: Sequence[str] | None = None,
         logy: bool = False, title: str | None = None) -> Path:
  """Write the curves of `keys` for every workdir to `out` (PNG); returns the path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  if not workdirs:
    raise ValueError("give at least one workdir (or metrics.jsonl file)")
  if labels is not None and len(labels) != len(workdirs):
    raise ValueError(f"got {len(labels)} labels for {len(workdirs)} workdirs")
  runs = []
  for i, w in enumerate(workdirs):
    path = Path(w)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.exists():
      raise FileNotFoundError(f"no metrics file at {file}")
    label = labels[i] if labels else (path.name if path.is_dir() else path.parent.name)
    runs.append((label, read_metrics(file)))
  if keys is None:
    present = {k for _, recs in runs for r in recs for k in r}
    keys = [k for k in DEFAULT_KEYS if k in present] or sorted(present - {"step"})[:4]
  keys = list(keys)
  if not keys:
    raise ValueError("no metrics to plot")

  cols = min(2, len(keys))
  rows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    drawn = False
    for label, recs in runs:
      xs, ys = series(recs, key)
      if xs:
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
        drawn = True
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if logy and drawn:
      ax.set_yscale("log")
    if drawn and (len(runs) > 1 or labels):
      ax.legend(fontsize=8)
    if not drawn:
      ax.text(0.5, 0.5, f"no {key}", ha="center", va="center", transform=ax.transAxes)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m attnlab.train.plot", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+", help="workdirs (or metrics.jsonl files)")
  p.add_argument("--out", default=None, help="output PNG")
  p.add_argument("--keys", nargs="+", default=None, help="metric names, e.g. train/loss")
  p.add_argument("--labels", nargs="+", default=None, help="one legend label per workdir")
  p.add_argument("--logy", action="store_true", help="log-scale y axes")
  p.add_argument("--title", default=None)
  args = p.parse_args(argv)
  out = args.out
  if out is None:
    first = Path(args.workdirs[0])
    out = first / "curves.png" if len(args.workdirs) == 1 and first.is_dir() else "curves.png"
  try:
    path = plot(args.workdirs, out, keys=args.keys, labels=args.labels, logy=args.logy,
                title=args.title)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
