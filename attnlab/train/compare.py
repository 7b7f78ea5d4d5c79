"""Compare mechanisms on one task under one budget, over seeds: a table and plots.

  python -m attnlab.train.compare --workdir runs/mqar_compare --config compare \
      --seeds 0 1 2 [--names a b ...] [--out results/cpu/mqar_compare] [--shard 0/2]
  python -m attnlab.train.compare --workdir runs/mqar_compare --config compare \
      --seeds 0 1 2 --report_only --out results/cpu/mqar_compare
  python -m attnlab.train.compare --configs configs/grid2d.py --workdir runs/grid2d \
      --seeds 0 1 2 --out results/cpu/grid2d             # the 2D grid task

The task is a config file (``--configs``, default ``configs/mechanisms.py``: MQAR) whose
``get_config("<name>[,<config>]")`` builds the run of catalogue entry ``<name>``; ``--config``
is the variant after the comma (``compare`` / ``local`` for MQAR; ``[HxW][,local]`` for
``configs/grid2d.py``). The file may also define ``COMPARE_NAMES`` (the default ``--names``;
else every catalogue entry), ``COMPARE_FIRST`` (run order; the rest sorted),
``COMPARE_HIGHLIGHT`` (drawn in curves.png) and ``COMPARE_CHANCE`` (a dotted line there): the
package names no mechanism ("one mechanism, one place").

Each run trains that config with ``config.seed = k`` in its own ``WORKDIR/<name>/seed<k>``;
every run has the same steps, batch and eval schedule (``--steps`` / ``--eval_every`` override
the config's; ``seed`` sets the initialisation and the shuffle order, the examples stay those
of ``data.data_seed``). Runs go seed-major (every mechanism with the first seed, then the next
seed), so a stopped comparison still covers every mechanism once. A finished run is not
repeated (``run.json`` marks it) and a stopped one resumes from its checkpoint (one is written
at the end only). Run folders of another budget (``budget.json``: steps, variant, eval
schedule) are refused before any run, also with ``--report_only``: a table never mixes
budgets. A failing run is recorded in ``error.json`` and reported in the table, not
fatal. ``--shard i/n`` runs every n-th run (start n processes for n workers);
``--report_only`` aggregates what is on disk.

Writes to ``--out`` (default: WORKDIR): ``summary.json`` (per mechanism: the seeds' final
accuracies, mean, std, min, max, mean curve with its min-max band), ``final_accuracy.png``
(sorted bars, whiskers = min-max over seeds), ``curves.png`` (mean eval accuracy vs step of
the highlighted mechanisms and the best others, shaded min-max band) and the table in
``summary.md``: between the ``<!-- compare:start -->`` / ``<!-- compare:end -->`` markers when
the file has them (the page's prose is kept), else a new file. ``ms/step`` is the median of a
run's logged train step times, averaged over seeds; like ``wall s/run`` it is measured on
whatever else the machine was doing (not a benchmark: ``python -m attnlab.bench``).

Needs a source checkout (it reads ``configs/`` beside the package), as after the README's
``pip install -e .``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mechanisms.py"
START, END = "<!-- compare:start -->", "<!-- compare:end -->"


@functools.lru_cache(maxsize=None)
def _configs_module(path: str | Path = _CONFIGS):
  """The task's config file as a module (``get_config`` and the optional ``COMPARE_*``)."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"--configs must be a config file, got {str(path)!r} (not found)")
  spec = importlib.util.spec_from_file_location(f"attnlab_compare_{path.stem}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  if not callable(getattr(mod, "get_config", None)):
    raise ValueError(f"--configs {str(path)!r} defines no get_config(arg)")
  return mod


def load_config(name: str, variant: str = "", configs: str | Path = _CONFIGS):
  """``<configs>:<name>[,<variant>]``, e.g. ``configs/mechanisms.py:gla,compare``."""
  return _configs_module(configs).get_config(name + (f",{variant}" if variant else ""))


def ordered(names: Sequence[str], first: Sequence[str] | None = None,
            configs: str | Path = _CONFIGS) -> list[str]:
  """``names`` with those of ``first`` (default: the config file's ``COMPARE_FIRST``)
  first, in that order, then the rest sorted."""
  if first is None:
    first = getattr(_configs_module(configs), "COMPARE_FIRST", ())
  head = [n for n in first if n in names]
  return head + sorted(set(names) - set(head))


class Stopped(Exception):
  """A run was stopped by a signal (it saved a checkpoint); the comparison stops too."""


def canonical_variant(variant: str | None) -> str:
  """The variant's comma-separated parts, sorted: ``"local,16x16"`` == ``"16x16,local"``."""
  return ",".join(sorted(p.strip() for p in (variant or "").split(",") if p.strip()))


def budget(steps: int, variant: str | None, eval_every: int) -> dict[str, Any]:
  """What every run of one comparison shares; a run folder records it in ``budget.json``."""
  return {"steps": int(steps), "variant": canonical_variant(variant),
          "eval_every": int(eval_every)}


def recorded_budget(workdir: Path) -> dict[str, Any] | None:
  """The budget ``workdir`` was started with (``budget.json``, else a finished run's
  ``run.json``, the former compare_grid's ``grid`` / ``local`` keys read as the variant, else
  the trainer's ``config.json``), a key None where the record lacks it; None for a folder
  without any."""
  for fname in ("budget.json", "run.json"):
    path = workdir / fname
    if path.exists():
      rec = json.loads(path.read_text())
      if "variant" not in rec and ("grid" in rec or "local" in rec):
        rec["variant"] = ",".join(p for p in (rec.get("grid") or "",
                                              "local" if rec.get("local") else "") if p)
      return {"steps": rec.get("steps"), "eval_every": rec.get("eval_every"),
              "variant": canonical_variant(rec["variant"]) if "variant" in rec else None}
  if (workdir / "config.json").exists():  # the trainer's copy of the config: no variant
    cfg = json.loads((workdir / "config.json").read_text())
    return {"steps": cfg.get("total_steps"), "eval_every": cfg.get("eval_every"),
            "variant": None}
  return None


def budget_mismatch(workdir: Path, want: dict[str, Any]) -> str | None:
  """How the budget recorded in ``workdir`` differs from ``want`` (None: same, or none kept).
  Keys an older record lacks are not compared."""
  got = recorded_budget(workdir)
  if got is None:
    return None
  diff = [f"{k} {got[k]!r} (want {want[k]!r})" for k in want
          if got.get(k) is not None and got[k] != want[k]]
  return ", ".join(diff) or None


def _finished(workdir: Path, steps: int, variant: str | None, eval_every: int) -> bool:
  """Whether ``workdir`` holds a finished run of this budget. A run (finished or stopped) of
  another budget (steps, config variant, eval schedule) is refused: resuming it would mix two
  schedules, and counting it would mix two tables."""
  from attnlab.train.metrics import read_metrics
  mismatch = budget_mismatch(workdir, budget(steps, variant, eval_every))
  if mismatch:
    raise ValueError(f"{workdir} holds a run of another budget: {mismatch}; use another "
                     "--workdir or delete that folder")
  if (workdir / "run.json").exists():
    return True
  return (workdir / "metrics.jsonl").exists() and any(
      r.get("step") == steps and "eval/accuracy" in r for r in read_metrics(workdir))


def run_one(name: str, workdir: Path, *, seed: int, variant: str, steps: int | None = None,
            eval_every: int | None = None, configs: str | Path = _CONFIGS) -> dict[str, Any]:
  """Train one (mechanism, seed) unless ``workdir/run.json`` says it is done; its record."""
  from attnlab.train import trainer
  config = load_config(name, variant, configs)
  with config.unlocked():
    config.seed = int(seed)
    if steps:
      config.total_steps = int(steps)
    if eval_every:
      config.eval_every = int(eval_every)
    config.log_every = min(config.log_every, config.eval_every)
    config.checkpoint_every = config.total_steps  # one checkpoint, at the end
    config.keep_checkpoints = 1
  steps = int(config.total_steps)
  if _finished(workdir, steps, variant, int(config.eval_every)):
    return json.loads((workdir / "run.json").read_text()) if (
        workdir / "run.json").exists() else {"mechanism": name, "seed": seed, "steps": steps}
  (workdir / "error.json").unlink(missing_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "budget.json").write_text(json.dumps(
      budget(steps, variant, int(config.eval_every))))
  t0 = time.time()
  result = trainer.train_and_evaluate(config, str(workdir))
  rec = {"mechanism": name, "seed": int(seed), "steps": steps, "variant": variant,
         "eval_every": int(config.eval_every), "wall_s": round(time.time() - t0, 1)}
  if result.get("status") != "done":  # SIGTERM / Ctrl-C: checkpointed, resumed next time
    raise Stopped(f"{name} seed {seed} stopped at step {result.get('step')}")
  (workdir / "run.json").write_text(json.dumps(rec))
  return rec


def _final_eval(records: list[dict], steps: int) -> dict | None:
  evals = [r for r in records if "eval/accuracy" in r]
  return evals[-1] if evals and evals[-1]["step"] == steps else None


def _curve(records: list[dict]) -> dict[int, float]:
  return {int(r["step"]): float(r["eval/accuracy"]) for r in records if "eval/accuracy" in r}


def aggregate(root: Path, names: Sequence[str], seeds: Sequence[int],
              steps: int) -> list[dict[str, Any]]:
  """One row per mechanism from ``root/<name>/seed<k>``: the seeds that finished ``steps``,
  their final eval accuracies, mean / std (population) / min / max, the mean final eval loss,
  mean wall time, mean of the runs' median train step times, the mean curve with its min-max
  band, failed and missing seeds."""
  from attnlab.train.metrics import read_metrics
  rows = []
  for name in names:
    finals, losses, walls, step_ms, curves, failed, missing = {}, [], [], [], [], {}, []
    for s in seeds:
      d = root / name / f"seed{s}"
      err = d / "error.json"
      final = None
      records = read_metrics(d) if (d / "metrics.jsonl").exists() else []
      final = _final_eval(records, steps)
      if final is not None:
        finals[s] = float(final["eval/accuracy"])
        losses.append(float(final["eval/loss"]))
        curves.append(_curve(records))
        times = [float(r["perf/step_time_s"]) for r in records if r.get("perf/step_time_s")]
        if times:
          step_ms.append(1e3 * statistics.median(times))
        if (d / "run.json").exists():
          wall = json.loads((d / "run.json").read_text()).get("wall_s")
          if wall is not None:
            walls.append(float(wall))
      elif err.exists():
        failed[s] = json.loads(err.read_text()).get("error", "?")
      else:
        missing.append(s)
    row: dict[str, Any] = {"mechanism": name, "seeds": sorted(finals), "final_accuracy": finals,
                           "failed": failed, "missing": missing}
    if finals:
      acc = list(finals.values())
      mean = sum(acc) / len(acc)
      row.update(mean=mean, std=math.sqrt(sum((a - mean) ** 2 for a in acc) / len(acc)),
                 min=min(acc), max=max(acc), final_eval_loss=sum(losses) / len(losses),
                 wall_s=round(sum(walls) / len(walls), 1) if walls else None,
                 step_ms=round(statistics.fmean(step_ms), 1) if step_ms else None)
      common = sorted(set.intersection(*(set(c) for c in curves)))
      row["curve"] = {"step": common,
                      "mean": [sum(c[t] for c in curves) / len(curves) for t in common],
                      "min": [min(c[t] for c in curves) for t in common],
                      "max": [max(c[t] for c in curves) for t in common]}
    rows.append(row)
  rows.sort(key=lambda r: (-r.get("mean", -1.0), r["mechanism"]))
  return rows


def _kind(name: str) -> str:
  import attnlab
  try:
    return attnlab.get_mechanism(name).kind
  except ValueError:
    return "?"


def table(rows: list[dict], seeds: Sequence[int], steps: int) -> list[str]:
  """Markdown table lines: mean, min-max, std over the seeds that finished."""
  f3 = lambda x: "-" if x is None else f"{x:.3f}"
  out = [f"Final eval accuracy after {steps} steps over seeds {list(seeds)}: mean, min-max "
         "and std (population) over the seeds that finished (`n`).", "",
         "| mechanism | kind | n | mean acc | min-max | std | final eval loss | wall s/run | "
         "ms/step |",
         "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    note = []
    if r["failed"]:
      note.append("failed seeds " + "; ".join(f"{s}: {e}" for s, e in r["failed"].items()))
    if r["missing"] and r["seeds"]:
      note.append(f"not run: seeds {r['missing']}")
    note = (" (" + "; ".join(note) + ")") if note else ""
    if "mean" not in r:
      why = note.strip(" ()") or f"not run (seeds {r['missing']})"
      out.append(f"| `{r['mechanism']}` | {_kind(r['mechanism'])} | 0 | {why} | | | | | |")
      continue
    out.append(f"| `{r['mechanism']}` | {_kind(r['mechanism'])} | {len(r['seeds'])}{note} | "
               f"{f3(r['mean'])} | {f3(r['min'])}-{f3(r['max'])} | {f3(r['std'])} | "
               f"{f3(r['final_eval_loss'])} | "
               f"{'-' if r['wall_s'] is None else r['wall_s']} | "
               f"{'-' if r.get('step_ms') is None else round(r['step_ms'])} |")
  return out


def write_summary(out: Path, lines: list[str], title: str) -> Path:
  """Put ``lines`` between the markers of ``out/summary.md`` (kept prose) or write a new page."""
  path = out / "summary.md"
  block = "\n".join([START, *lines, END])
  text = path.read_text() if path.exists() else ""
  if START in text and END in text and text.index(START) < text.index(END):
    head, rest = text.split(START, 1)
    text = head + block + rest.split(END, 1)[1]
  else:
    text = (f"# {title}\n\n{block}\n\n![final accuracy](final_accuracy.png)\n\n"
            "![curves](curves.png)\n")
  path.write_text(text)
  return path


def plot_final(rows: list[dict], out: Path, title: str) -> Path:
  """Sorted horizontal bars of the mean final accuracy, min-max whiskers, colour = kind."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [r for r in rows if "mean" in r][::-1]  # best on top
  kinds = sorted({_kind(r["mechanism"]) for r in rows})
  colour = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(kinds)}
  fig, ax = plt.subplots(figsize=(8, 0.24 * len(rows) + 1.5))
  ys = range(len(rows))
  means = [r["mean"] for r in rows]
  err = [[r["mean"] - r["min"] for r in rows], [r["max"] - r["mean"] for r in rows]]
  ax.barh(ys, means, xerr=err, color=[colour[_kind(r["mechanism"])] for r in rows],
          error_kw=dict(lw=1, capsize=2), height=0.7)
  ax.set_yticks(list(ys), [f"{r['mechanism']} (n={len(r['seeds'])})" for r in rows],
                fontsize=7)
  ax.set_xlim(0, 1.02)
  ax.set_xlabel("final eval accuracy (mean over seeds; whiskers: min-max)")
  ax.set_title(title, fontsize=9)
  ax.grid(axis="x", alpha=0.3)
  ax.legend(handles=[matplotlib.patches.Patch(color=colour[k], label=k) for k in kinds],
            loc="lower right", fontsize=7)
  fig.tight_layout()
  path = out / "final_accuracy.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_curves(rows: list[dict], out: Path, title: str, highlight: Sequence[str] = (),
                top: int = 4, chance: float | None = None) -> Path:
  """Mean eval accuracy vs step, shaded min-max band: ``highlight`` + the ``top`` best others;
  ``chance``: a dotted line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  done = [r for r in rows if "mean" in r]
  pick = [r for r in done if r["mechanism"] in highlight]
  pick += [r for r in done if r["mechanism"] not in highlight][:top]
  fig, ax = plt.subplots(figsize=(10, 5.5))
  cmap = plt.get_cmap("tab20")
  for i, r in enumerate(pick):
    c = r["curve"]
    ax.plot(c["step"], c["mean"], color=cmap(i % 20), lw=2.2 if i == 0 else 1.3,
            ls="-" if r["mechanism"] in highlight else "--",
            label=f"{r['mechanism']} ({r['mean']:.2f})")
    ax.fill_between(c["step"], c["min"], c["max"], color=cmap(i % 20), alpha=0.15, lw=0)
  if chance is not None:
    ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance ({chance:g})")
  ax.set_xlabel("step")
  ax.set_ylabel("eval accuracy")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
  fig.tight_layout()
  path = out / "curves.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _shown(path: str | Path) -> str:
  """``path`` relative to the checkout when inside it (as in a page's config line)."""
  path = Path(path).resolve()
  root = _CONFIGS.parents[1]
  return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def report(root: Path, out: Path, names: Sequence[str], seeds: Sequence[int], steps: int,
           variant: str, configs: str | Path = _CONFIGS) -> list[dict]:
  """Aggregate, then write summary.json, summary.md's table and the two plots to ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  rows = aggregate(root, names, seeds, steps)
  cfg = f"{_shown(configs)}:<name>{',' + variant if variant else ''}"
  lines = table(rows, seeds, steps)
  write_summary(out, lines, f"Comparison ({cfg}, {steps} steps, seeds {list(seeds)})")
  (out / "summary.json").write_text(json.dumps(
      {"config": cfg, "steps": steps, "seeds": list(seeds), "spread": "min-max and "
       "population std over seeds", "rows": rows}, indent=1))
  if any("mean" in r for r in rows):
    mod = _configs_module(configs)
    title = f"{cfg}, {steps} steps, seeds {list(seeds)}"
    plot_final(rows, out, title)
    plot_curves(rows, out, title, getattr(mod, "COMPARE_HIGHLIGHT", ()),
                chance=getattr(mod, "COMPARE_CHANCE", None))
  return rows


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m attnlab.train.compare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="run folders: WORKDIR/<name>/seed<k>")
  p.add_argument("--out", default=None, help="summary / plots folder (default: WORKDIR)")
  p.add_argument("--configs", default=str(_CONFIGS),
                 help="the task's config file, get_config('<name>[,<config>]') (default: "
                      "configs/mechanisms.py, MQAR; configs/grid2d.py: the 2D grid task)")
  p.add_argument("--config", default="",
                 help="the variant after the comma: compare / local for MQAR, "
                      "[HxW][,local] for configs/grid2d.py")
  p.add_argument("--local", action="store_true", help="adds local to --config (smoke test)")
  p.add_argument("--steps", type=int, default=None, help="default: the config's total_steps")
  p.add_argument("--eval_every", type=int, default=None, help="default: the config's")
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--names", nargs="*", default=None, help="default: every catalogue entry")
  p.add_argument("--shard", default="0/1", help="i/n: run only runs i, i+n, ... of the list")
  p.add_argument("--report_only", action="store_true", help="aggregate what is on disk")
  a = p.parse_args(argv)
  variant = canonical_variant(a.config + (",local" if a.local else ""))
  if (a.steps is not None and a.steps < 1) or (a.eval_every is not None and a.eval_every < 1):
    p.error(f"--steps and --eval_every must be >= 1, got {a.steps} and {a.eval_every}")
  try:
    shard, nshards = (int(x) for x in a.shard.split("/"))
    assert 0 <= shard < nshards
  except (ValueError, AssertionError):
    p.error(f"--shard must be i/n with 0 <= i < n, got {a.shard!r}")
  import attnlab
  import attnlab.models  # noqa: F401  (registers modules, pooling heads, variants)
  known = attnlab.list_mechanisms()
  unknown = sorted(set(a.names or ()) - set(known))
  if unknown:
    p.error(f"unknown mechanisms {unknown}; known: {known}")
  try:
    mod = _configs_module(a.configs)
    default = getattr(mod, "COMPARE_NAMES", None)
    names = list(a.names) if a.names else list(default) if default else ordered(
        known, configs=a.configs)
    base = load_config(names[0], variant, a.configs)  # a bad --config fails here, not per run
  except ValueError as e:
    p.error(str(e))
  steps = a.steps or int(base.total_steps)
  root = Path(a.workdir)
  want = budget(steps, variant, a.eval_every or base.eval_every)
  other = [f"{n}/seed{s}: {m}" for s in a.seeds for n in names
           if (m := budget_mismatch(root / n / f"seed{s}", want))]
  if other:  # before any run: a table must not mix budgets
    p.error(f"{len(other)} run folder(s) in {root} hold another budget than {want}, e.g. "
            f"{other[0]}; use another --workdir or delete them")
  root.mkdir(parents=True, exist_ok=True)
  runs = [(s, n) for s in a.seeds for n in names][shard::nshards]
  for i, (seed, name) in enumerate([] if a.report_only else runs):
    print(f"[{i + 1}/{len(runs)}] {name} seed {seed}", flush=True)
    d = root / name / f"seed{seed}"
    try:
      run_one(name, d, seed=seed, variant=variant, steps=steps, eval_every=a.eval_every,
              configs=a.configs)
    except Stopped as e:
      print(f"{e}; rerun the same command to resume", flush=True)
      break
    except Exception as e:  # one failing mechanism must not hide the others
      traceback.print_exc()
      d.mkdir(parents=True, exist_ok=True)
      (d / "error.json").write_text(json.dumps(
          {"error": " ".join(f"{type(e).__name__}: {e}".split())[:200]}))
  rows = report(root, Path(a.out or root), names, a.seeds, steps, variant, a.configs)
  print("\n".join(table(rows, a.seeds, steps)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
