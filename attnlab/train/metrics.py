"""Metric sinks (``metrics.jsonl`` + TensorBoard), console lines, FLOPs and MFU.

``DIR/metrics.jsonl`` gets one JSON object per logged step, e.g.
``{"step": 100, "train/loss": 2.31, "train/lr": 0.001, ...}`` and, at eval steps, a separate
record ``{"step": 100, "eval/loss": ..., "eval/accuracy": ..., "eval/bits_per_byte": ...}``.
A non-finite value (NaN, inf) is written as JSON ``null`` and its key listed in the record's
``"non_finite"`` field (``{"step": 5, "train/loss": null, "non_finite": ["train/loss"]}``), so
that strict JSON parsers read every line. TensorBoard event files (tensorboardX, no TensorFlow)
go to ``DIR/tb``. Only process 0
writes. On resume, records after the restored step are dropped (they belonged to the
interrupted run and are recomputed) and TensorBoard purges them (``purge_step``); a run that
starts afresh in a used workdir (``start_step=-1``: killed before its first checkpoint, or
restarted from scratch) drops them all.

MFU (model FLOPs utilisation) = model FLOP/s / peak FLOP/s. Model FLOPs per token follow
PaLM (arXiv 2204.02311, appendix B): ``6 * N + 12 * L * H * Dh * T`` for a forward and backward
pass, ``N`` = all parameters (embeddings included), ``L`` layers, ``H`` query heads of size
``Dh``, ``T`` the sequence length (no causal discount). Peak FLOP/s per device come from
:data:`PEAK_FLOPS` (dense bf16 figures of the data sheets, matched on ``device_kind``) unless
``config.peak_flops_per_device`` is set. CPU has no meaningful peak: a nominal
:data:`CPU_NOMINAL_FLOPS_PER_PROCESS` = 1e11 FLOP/s per process (shared by its CPU devices,
which are one host's cores) is used, so CPU "MFU" only compares runs on the same machine.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import jax

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"

# Dense bf16 peak FLOP/s of one JAX device, matched as substrings of device_kind (lower case),
# first match wins. TPU v2/v3 devices are single cores (half a chip).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918e12), ("v6e", 918e12),
    ("v5 lite", 197e12), ("v5e", 197e12), ("v5p", 459e12), ("v5", 459e12),
    ("v4", 275e12), ("v3", 61.5e12), ("v2", 22.5e12),
    ("gb200", 2250e12), ("b200", 2250e12), ("h200", 989e12), ("h100", 989e12),
    ("h800", 989e12), ("a100", 312e12), ("a800", 312e12), ("l40s", 362e12),
    ("l4", 121e12), ("a10g", 70e12), ("a10", 125e12), ("v100", 125e12), ("t4", 65e12),
)
CPU_NOMINAL_FLOPS_PER_PROCESS = 1e11
GPU_FALLBACK_FLOPS = 100e12  # unknown GPU model


def peak_flops_per_device(device: Any = None, override: float = 0.0) -> float:
  """Peak FLOP/s of one device (see module docstring)."""
  if override and override > 0:
    return float(override)
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    return CPU_NOMINAL_FLOPS_PER_PROCESS / max(1, jax.local_device_count())
  kind = device.device_kind.lower()
  for key, value in PEAK_FLOPS:
    if key in kind:
      return value
  return GPU_FALLBACK_FLOPS


def flops_per_token(num_params: int, *, num_layers: int, num_heads: int, head_dim: int,
                    seq_len: int) -> float:
  """Training FLOPs per token: ``6 N + 12 L H Dh T`` (PaLM appendix B)."""
  return 6.0 * num_params + 12.0 * num_layers * num_heads * head_dim * seq_len


class MetricsWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str | os.PathLike, *, start_step: int = 0,
               enabled: bool | None = None):
    self.workdir = Path(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = self.workdir / METRICS_FILE
    self._tb = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    truncate_metrics(self.path, start_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(str(self.workdir / TB_DIR),
                             purge_step=start_step + 1 if start_step != 0 else None)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = json_record(step, metrics)
    with self.path.open("a") as f:
      f.write(json.dumps(record, allow_nan=False) + "\n")
    for k, v in metrics.items():
      v = _to_python(v)
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(k, v, global_step=int(step))  # NaN/inf too: TB shows them
    self._tb.flush()

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, global_step=step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def json_record(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
  """``{"step": step, **metrics}`` with NaN/inf as None, listed under ``"non_finite"``."""
  record: dict[str, Any] = {"step": int(step)}
  bad = []
  for k, v in metrics.items():
    v = _to_python(v)
    if isinstance(v, float) and not math.isfinite(v):
      bad.append(k)
      v = None
    record[k] = v
  if bad:
    record["non_finite"] = bad
  return record


def _to_python(v: Any) -> Any:
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) or isinstance(v, int):
    return v
  return v


def truncate_metrics(path: str | os.PathLike, max_step: int) -> None:
  """Drop records with ``step > max_step`` (an interrupted run's tail) from a jsonl file."""
  path = Path(path)
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      if json.loads(line).get("step", 0) <= max_step:
        kept.append(line)
    except json.JSONDecodeError:
      continue  # a line cut by a crash
  path.write_text("".join(l + "\n" for l in kept))


def read_metrics(workdir_or_file: str | os.PathLike) -> list[dict[str, Any]]:
  """Records of ``metrics.jsonl`` (a workdir or the file itself)."""
  path = Path(workdir_or_file)
  if path.is_dir():
    path = path / METRICS_FILE
  out = []
  for line in path.read_text().splitlines():
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


def format_count(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.0f}"


def console_line(step: int, total: int, m: Mapping[str, float], eta_s: float) -> str:
  width = len(str(total))
  parts = [f"step {step:>{width}}/{total} ({100.0 * step / total:5.1f}%)",
           f"loss {m.get('train/loss', float('nan')):.4f}"]
  if "train/bits_per_byte" in m:
    parts.append(f"bpb {m['train/bits_per_byte']:.3f}")
  if "train/accuracy" in m:
    parts.append(f"acc {m['train/accuracy']:.3f}")
  if "train/lr" in m:
    parts.append(f"lr {m['train/lr']:.2e}")
  if "train/grad_norm" in m:
    parts.append(f"|g| {m['train/grad_norm']:.3f}")
  if "perf/tokens_per_sec" in m:
    parts.append(f"{format_count(m['perf/tokens_per_sec'])} tok/s")
  if "perf/step_time_s" in m:
    parts.append(f"{1000.0 * m['perf/step_time_s']:.0f} ms/step")
  if "perf/mfu" in m:
    parts.append(f"MFU {100.0 * m['perf/mfu']:.1f}%")
  parts.append(f"ETA {format_duration(eta_s)}")
  return " | ".join(parts)
