"""Compare mechanisms on the 2D grid task over several seeds: a table and a plot.

  python -m attnlab.train.compare_grid --workdir /tmp/grid2d_runs --out results/cpu/grid2d \
      [--names softmax axial ...] [--seeds 0 1 2] [--steps 400] [--eval_every 50] [--grid 8x8]

Each (mechanism, seed) trains ``configs/grid2d.py:<name>[,HxW]`` (the ``grid_quadrant`` task,
an encoder classifier; the mechanism's 2D layout from ``grid2d.grid_overrides``) with
``config.seed = seed`` (initialisation and train-data order; the task data, ``data_seed``,
is the same for every run) in ``WORKDIR/<name>/seed<seed>``. A finished run is not repeated
(its metrics are reused), an unfinished one is deleted and started over (runs are short and
checkpoint only at the end), and a failing one is reported in the table, not fatal.
``ms / train step`` is the median of the trainer's logged step times (a shared CPU makes it
noisy; not a benchmark). Writes ``OUT/summary.md`` (table: mean +- std over seeds and the
min-max range), ``OUT/summary.json`` (every run with its eval curve) and ``OUT/accuracy.png``
(mean eval accuracy vs step, min-max band over seeds); a "## Reading" section already in
``OUT/summary.md`` is kept. Needs a source checkout (it reads ``configs/grid2d.py`` beside the
package), as ``compare``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "grid2d.py"
READING = "## Reading"  # a summary.md section written by hand, kept when the table is rewritten


def config_module():
  """``configs/grid2d.py`` as a module (``get_config``, ``COMPARE_NAMES``)."""
  spec = importlib.util.spec_from_file_location("attnlab_configs_grid2d", _CONFIGS)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load_config(name: str, grid: str = "", local: bool = False):
  """``configs/grid2d.py:<name>[,<grid>][,local]``."""
  arg = ",".join([name] + ([grid] if grid else []) + (["local"] if local else []))
  return config_module().get_config(arg)


def run_one(name: str, seed: int, workdir: Path, *, steps: int, eval_every: int, grid: str,
            local: bool) -> dict[str, Any]:
  """Trains (or reuses) one run; its final / best eval accuracy and eval curve."""
  from attnlab.train import trainer  # pylint: disable=g-import-not-at-top
  from attnlab.train.metrics import read_metrics  # pylint: disable=g-import-not-at-top
  config = load_config(name, grid, local)
  with config.unlocked():
    config.seed = seed
    config.total_steps = steps
    config.eval_every = eval_every
    config.log_every = min(config.log_every, eval_every)
    config.checkpoint_every = steps
  t0 = time.time()
  budget = {"grid": grid, "local": bool(local), "steps": steps, "eval_every": eval_every}
  marker = workdir / "run.json"
  done = marker.exists()
  if done and json.loads(marker.read_text()) != budget:
    raise ValueError(f"{workdir} holds a finished run of another budget "
                     f"{json.loads(marker.read_text())}, not {budget}; use another --workdir")
  if not done:
    # A stopped run of this budget resumes from its checkpoint; anything else starts afresh.
    if not (workdir / "budget.json").exists() or json.loads(
        (workdir / "budget.json").read_text()) != budget:
      shutil.rmtree(workdir, ignore_errors=True)
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / "budget.json").write_text(json.dumps(budget))
    result = trainer.train_and_evaluate(config, str(workdir))
    if result.get("status") != "done":  # SIGTERM / Ctrl-C: checkpointed, resumed next time
      raise KeyboardInterrupt(f"{name} seed {seed} stopped at step {result.get('step')}")
    marker.write_text(json.dumps(budget))
  records = read_metrics(workdir)
  evals = [r for r in records if "eval/accuracy" in r]
  step_times = [r["perf/step_time_s"] for r in records if r.get("perf/step_time_s")]
  final = evals[-1] if evals else {}
  return {"mechanism": name, "seed": seed, "steps": steps,
          "final_accuracy": final.get("eval/accuracy"),
          "best_accuracy": max((r["eval/accuracy"] for r in evals), default=None),
          "final_eval_loss": final.get("eval/loss"),
          "step_ms": 1e3 * statistics.median(step_times) if step_times else None,
          "wall_s": None if done else round(time.time() - t0, 1),
          "curve": [[r["step"], r["eval/accuracy"]] for r in evals]}


def _stats(xs: list[float]) -> dict[str, float] | None:
  if not xs:
    return None
  return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0,
          "min": min(xs), "max": max(xs)}


def aggregate(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
  """One row per mechanism: stats over its successful seeds, failures listed; best first."""
  rows = []
  for name in names:
    mine = [r for r in runs if r["mechanism"] == name]
    ok = [r for r in mine if "error" not in r and r.get("final_accuracy") is not None]
    step_ms = [r["step_ms"] for r in ok if r.get("step_ms") is not None]
    rows.append({
        "mechanism": name, "seeds": [r["seed"] for r in ok],
        "final_accuracy": _stats([r["final_accuracy"] for r in ok]),
        "best_accuracy": _stats([r["best_accuracy"] for r in ok]),
        "final_eval_loss": _stats([r["final_eval_loss"] for r in ok]),
        "step_ms_mean": statistics.fmean(step_ms) if step_ms else None,
        "errors": [f"seed {r['seed']}: {r['error']}" for r in mine if "error" in r]})
  rows.sort(key=lambda r: -(r["final_accuracy"] or {"mean": -1.0})["mean"])
  return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
  """Markdown table lines of ``aggregate``'s rows."""
  def pm(s, digits=3):
    return "-" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

  def rng(s):
    return "-" if s is None else f"{s['min']:.3f}–{s['max']:.3f}"

  lines = ["| mechanism | final eval accuracy (mean ± std) | min–max over seeds | "
           "best eval accuracy | final eval loss | seeds | ms / train step |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    ms = "-" if r["step_ms_mean"] is None else f"{r['step_ms_mean']:.0f}"
    note = f" (failed: {'; '.join(r['errors'])})" if r["errors"] else ""
    lines.append(f"| `{r['mechanism']}` | {pm(r['final_accuracy'])} | "
                 f"{rng(r['final_accuracy'])} | {pm(r['best_accuracy'])} | "
                 f"{pm(r['final_eval_loss'])} | {len(r['seeds'])}{note} | {ms} |")
  return lines


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path,
         title: str) -> Path:
  """Mean eval accuracy vs step per mechanism (best first), min-max band over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(10, 5.5))
  cmap = plt.get_cmap("tab10")
  for i, row in enumerate(r for r in rows if r["seeds"]):
    curves = [dict(map(tuple, r["curve"])) for r in runs
              if r["mechanism"] == row["mechanism"] and "error" not in r]
    steps = sorted(set.intersection(*[set(c) for c in curves]))
    ys = [[c[s] for c in curves] for s in steps]
    color = cmap(i % 10)
    ax.plot(steps, [statistics.fmean(y) for y in ys], marker="o", ms=3, color=color,
            label=f"{row['mechanism']} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=color,
                    alpha=0.15, lw=0)
  ax.axhline(0.25, color="gray", ls=":", lw=1, label="chance (0.25)")
  ax.set_xlabel("step")
  ax.set_ylabel("eval accuracy (quadrant)")
  ax.set_ylim(0.0, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m attnlab.train.compare_grid", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="run folders (checkpoints, metrics)")
  p.add_argument("--out", default="", help="summary folder; default: the workdir")
  p.add_argument("--names", nargs="*", default=None,
                 help="default: COMPARE_NAMES of configs/grid2d.py")
  p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--eval_every", type=int, default=50)
  p.add_argument("--grid", default="", help="HxW, e.g. 16x16; default: configs/grid2d.py's")
  p.add_argument("--local", action="store_true", help="tiny configs (smoke test)")
  a = p.parse_args(argv)
  a.names = list(config_module().COMPARE_NAMES) if a.names is None else a.names
  if a.steps < 1 or a.eval_every < 1 or not a.seeds or not a.names:
    p.error("--steps and --eval_every must be >= 1; --seeds and --names non-empty")
  root, out = Path(a.workdir), Path(a.out or a.workdir)
  out.mkdir(parents=True, exist_ok=True)
  base = load_config(a.names[0], a.grid, a.local)  # bad --grid fails here, before any run
  runs = []
  for seed in a.seeds:  # seed-major: a stopped sweep still covers every mechanism
    for name in a.names:
      print(f"[{len(runs) + 1}/{len(a.names) * len(a.seeds)}] {name} seed {seed}", flush=True)
      try:
        runs.append(run_one(name, seed, root / name / f"seed{seed}", steps=a.steps,
                            eval_every=a.eval_every, grid=a.grid, local=a.local))
      except Exception as e:  # one failing run must not hide the others
        traceback.print_exc()
        runs.append({"mechanism": name, "seed": seed,
                     "error": " ".join(f"{type(e).__name__}: {e}".split())[:200]})
  rows = aggregate(runs, a.names)
  d, m = base.data, base.model
  setup = (f"grid_quadrant {d.grid_height}x{d.grid_width} ({d.num_levels} levels, "
           f"{d.num_colors} colours, {d.num_distractors} distractors), encoder classifier "
           f"({m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads, pooling "
           f"{m.pooling!r}), {a.steps} steps of {base.batch_size}, seeds {a.seeds}")
  command = "python -m attnlab.train.compare_grid " + " ".join(
      sys.argv[1:] if argv is None else argv)
  lines = ["# 2D grid task: mechanisms compared", "", f"Setup: {setup}.", "",
           f"Command: `{command}`", ""] + table(rows)
  summary = out / "summary.md"
  old = summary.read_text() if summary.exists() else ""
  reading = old[old.index(READING):] if READING in old else ""  # kept across re-runs
  summary.write_text("\n".join(lines) + "\n" + ("\n" + reading if reading else ""))
  (out / "summary.json").write_text(json.dumps(
      {"setup": setup, "grid": f"{d.grid_height}x{d.grid_width}", "steps": a.steps,
       "batch_size": base.batch_size, "seeds": a.seeds, "rows": rows, "runs": runs},
      indent=1))
  if any(r["seeds"] for r in rows):
    plot(runs, rows, out / "accuracy.png",
         f"grid_quadrant {d.grid_height}x{d.grid_width}, {a.steps} steps: eval accuracy vs step "
         + (f"(mean, min-max band over {len(a.seeds)} seeds)" if len(a.seeds) > 1 else
            f"(seed {a.seeds[0]})"))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
