"""Shared measurement helpers: timing, compiled memory/FLOPs, device info, JSON output."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import statistics
import time
from typing import Any, Callable

import jax


def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
          "jax_version": jax.__version__, "host": platform.machine(),
          "cpu_count": os.cpu_count()}


def device_slug() -> str:
  kind = jax.devices()[0].device_kind
  return "".join(c if c.isalnum() else "-" for c in kind).strip("-").lower() or "unknown"


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a,
                      x)


def time_fn(fn: Callable[..., Any], *args, warmup: int = 1, runs: int = 5) -> dict[str, float]:
  """Median / min wall seconds of ``fn(*args)`` over ``runs`` after ``warmup`` calls."""
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def program_fingerprint(compiled: Any) -> str:
  """A hash of the optimised HLO with names, numbering and source metadata removed: two
  callables with the same fingerprint compiled to the same program (same speed by
  construction)."""
  lines = []
  for line in compiled.as_text().splitlines():
    s = line.strip()
    if not s.startswith(("%", "ROOT", "ENTRY")):
      continue
    s = re.sub(r",? ?metadata=\{[^}]*\}", "", s)
    s = re.sub(r",? ?stack_frame_id=\d+", "", s)
    lines.append(re.sub(r"(%[\w\-]+)\.\d+", r"\1", s))
  return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def interleaved_min(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
  """Min wall seconds of each zero-argument ``fn`` over ``rounds``, timed in turn (A B C A B
  C ...) after one warm-up each, so that load on a shared machine hits all of them alike."""
  for fn in fns.values():
    block(fn())
  times: dict[str, list[float]] = {n: [] for n in fns}
  for _ in range(rounds):
    for n, fn in fns.items():
      t0 = time.perf_counter()
      block(fn())
      times[n].append(time.perf_counter() - t0)
  return {n: min(t) for n, t in times.items()}


def compiled_stats(jitted: Callable[..., Any], *args) -> dict[str, Any]:
  """Compiled temporary / argument / output bytes, XLA's FLOP estimate and the program's
  fingerprint (``program_fingerprint``)."""
  compiled = jitted.lower(*args).compile()
  out: dict[str, Any] = {"program": program_fingerprint(compiled)}
  try:
    mem = compiled.memory_analysis()
    out.update(temp_bytes=int(mem.temp_size_in_bytes),
               argument_bytes=int(mem.argument_size_in_bytes),
               output_bytes=int(mem.output_size_in_bytes))
  except Exception as e:  # some backends do not report
    out["memory_error"] = repr(e)
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    out["xla_flops"] = float(cost.get("flops", float("nan")))
  except Exception as e:
    out["cost_error"] = repr(e)
  return out


def write_json(kind: str, payload: dict[str, Any], out_dir: str = "results",
               path: str | None = None) -> str:
  """Write ``results/<device>/<kind>-<timestamp>.json`` (or rewrite ``path``); returns it."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  if path is None:
    folder = os.path.join(out_dir, device_slug())
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{kind}-{stamp}.json")
  with open(path, "w") as f:
    json.dump({"benchmark": kind, "device": device_info(), "utc": stamp, **payload}, f, indent=2)
  return path


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
  widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  print("  ".join("-" * w for w in widths))
  for r in rows:
    print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(x) -> str:
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.4g}"
  return str(x)


MIB = 2**20
