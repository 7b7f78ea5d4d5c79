"""Tile sizes and launch parameters of the flash kernels, per device, cached on disk.

``block_config(...)`` returns a dict with ``block_q, block_k, block_q_bwd, block_k_bwd,
num_warps, num_stages, num_warps_bwd, num_stages_bwd``:

* interpret mode (CPU): fixed small defaults, never measured, no cache;
* otherwise the cached choice for the key (device kind, backend, dtype, head_dim, q/kv length
  rounded up to a power of two, mask kind, normaliser) from ``autotune.json`` in
  ``$ATTNLAB_CACHE_DIR`` (default ``~/.cache/attnlab``);
* on a cache miss, when measuring is enabled (``ATTNLAB_AUTOTUNE`` unset or "1"; "0" disables)
  and the caller gave a ``measure(config, direction=...)`` function: time the forward
  candidates, then the backward ones with the best forward fixed; store the winner;
* else a per-backend heuristic.

Writes are atomic (temp file + rename) and merge with entries other processes wrote meanwhile.
``measure_candidate(attention_fn, config, ...)`` times one candidate of a real call; the
kernel's entry point binds it as the ``measure`` function above.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import pathlib
import tempfile
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CACHE_ENV = "ATTNLAB_CACHE_DIR"
AUTOTUNE_ENV = "ATTNLAB_AUTOTUNE"
CACHE_FILE = "autotune.json"
FIELDS = ("block_q", "block_k", "block_q_bwd", "block_k_bwd", "num_warps", "num_stages",
          "num_warps_bwd", "num_stages_bwd")
FWD_FIELDS = ("block_q", "block_k", "num_warps", "num_stages")
BWD_FIELDS = ("block_q_bwd", "block_k_bwd", "num_warps_bwd", "num_stages_bwd")

INTERPRET_DEFAULT = dict(block_q=32, block_k=32, block_q_bwd=32, block_k_bwd=32,
                         num_warps=None, num_stages=None, num_warps_bwd=None,
                         num_stages_bwd=None)

_lock = threading.Lock()
_memory: dict[str, dict[str, dict]] = {}  # cache path -> entries read so far


def heuristic(backend: str, head_dim: int) -> dict:
  """Defaults when nothing is cached (FlashAttention-2 Triton / splash-attention sizes)."""
  if backend == "mosaic":
    if head_dim > 128:
      return dict(block_q=256, block_k=256, block_q_bwd=128, block_k_bwd=128, num_warps=None,
                  num_stages=None, num_warps_bwd=None, num_stages_bwd=None)
    return dict(block_q=512, block_k=512, block_q_bwd=256, block_k_bwd=256, num_warps=None,
                num_stages=None, num_warps_bwd=None, num_stages_bwd=None)
  if head_dim <= 64:
    return dict(block_q=128, block_k=64, block_q_bwd=64, block_k_bwd=64, num_warps=4,
                num_stages=3, num_warps_bwd=4, num_stages_bwd=2)
  if head_dim <= 128:
    return dict(block_q=128, block_k=64, block_q_bwd=64, block_k_bwd=64, num_warps=8,
                num_stages=3, num_warps_bwd=8, num_stages_bwd=2)
  return dict(block_q=64, block_k=32, block_q_bwd=32, block_k_bwd=32, num_warps=4,
              num_stages=2, num_warps_bwd=4, num_stages_bwd=1)


def candidates(backend: str, head_dim: int) -> tuple[list[dict], list[dict]]:
  """(forward candidates, backward candidates), each a list of partial configs."""
  if backend == "mosaic":
    fwd = [dict(block_q=bq, block_k=bk, num_warps=None, num_stages=None)
           for bq, bk in ((128, 128), (256, 256), (256, 512), (512, 512), (512, 1024))
           if head_dim <= 128 or bq * bk <= 256 * 512]
    bwd = [dict(block_q_bwd=bq, block_k_bwd=bk, num_warps_bwd=None, num_stages_bwd=None)
           for bq, bk in ((128, 128), (256, 256), (256, 512), (512, 512))
           if head_dim <= 128 or bq * bk <= 256 * 256]
    return fwd, bwd
  if head_dim <= 128:
    fwd_opts = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3),
                (128, 32, 4, 4), (64, 128, 4, 3), (128, 128, 8, 2)]
    bwd_opts = [(64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2),
                (128, 64, 8, 2), (64, 128, 8, 2), (32, 32, 4, 2)]
  else:
    fwd_opts = [(64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2),
                (32, 32, 4, 2)]
    bwd_opts = [(32, 32, 4, 1), (32, 32, 4, 2), (64, 32, 4, 1), (32, 64, 4, 1),
                (64, 64, 8, 1)]
  fwd = [dict(block_q=a, block_k=b, num_warps=w, num_stages=s) for a, b, w, s in fwd_opts]
  bwd = [dict(block_q_bwd=a, block_k_bwd=b, num_warps_bwd=w, num_stages_bwd=s)
         for a, b, w, s in bwd_opts]
  return fwd, bwd


def cache_path(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  base = cache_dir or os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "attnlab"
  return pathlib.Path(base) / CACHE_FILE


def _bucket(n: int) -> int:
  return 1 << max(0, (int(n) - 1).bit_length())


def device_kind() -> str:
  try:
    return jax.devices()[0].device_kind
  except Exception:  # pragma: no cover - no device
    return jax.default_backend()


def make_key(*, device: str, backend: str, dtype: Any, head_dim: int, q_len: int, kv_len: int,
             mask_kind: str, normalizer: str) -> str:
  return "|".join([device, backend, str(np.dtype(dtype)), f"d{head_dim}",
                   f"q{_bucket(q_len)}", f"k{_bucket(kv_len)}", mask_kind, normalizer])


def load_cache(path: pathlib.Path) -> dict[str, dict]:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}
  entries = data.get("entries", {}) if isinstance(data, dict) else {}
  return {k: v for k, v in entries.items() if isinstance(v, dict)}


def save_entry(path: pathlib.Path, key: str, config: dict, extra: dict | None = None) -> None:
  """Merge one entry into the cache file (atomic replace)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with _lock:
    entries = load_cache(path)
    entries[key] = {**{f: config.get(f) for f in FIELDS}, **(extra or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
    try:
      with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, "entries": entries}, f, indent=1, sort_keys=True)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
    _memory[str(path)] = entries


def lookup(path: pathlib.Path, key: str) -> dict | None:
  with _lock:
    entries = _memory.get(str(path))
    if entries is None or key not in entries:
      entries = load_cache(path)
      _memory[str(path)] = entries
  entry = entries.get(key)
  if entry is None or not all(f in entry for f in FIELDS):
    return None
  return {f: entry[f] for f in FIELDS}


def tune(measure: Callable[..., float], fwd_candidates: list[dict],
         bwd_candidates: list[dict], base: dict) -> tuple[dict, dict]:
  """Pick the fastest forward candidate, then the fastest backward one (timed as fwd+bwd).

  ``measure(config, direction="fwd" | "bwd")`` returns seconds (``inf`` for a failure).
  Returns ``(config, timings)``.
  """
  timings: dict[str, float] = {}
  best = dict(base)
  best_t = math.inf
  for cand in fwd_candidates:
    cfg = {**best, **cand}
    t = measure(cfg, direction="fwd")
    timings["fwd:" + _label(cand)] = t
    if t < best_t:
      best_t, best = t, cfg
  fwd_best = {f: best[f] for f in FWD_FIELDS}
  best_t = math.inf
  for cand in bwd_candidates:
    cfg = {**best, **fwd_best, **cand}
    t = measure(cfg, direction="bwd")
    timings["bwd:" + _label(cand)] = t
    if t < best_t:
      best_t, best = t, cfg
  return best, timings


def _label(cand: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in cand.items())


def autotune_enabled() -> bool:
  return os.environ.get(AUTOTUNE_ENV, "1") != "0"


def block_config(*, backend: str, interpret: bool, dtype: Any, head_dim: int, q_len: int,
                 kv_len: int, mask_kind: str, normalizer: str,
                 measure: Callable[..., float] | None = None, device: str | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 enabled: bool | None = None) -> dict:
  """The kernel configuration for a call (see the module docstring)."""
  if interpret:
    return dict(INTERPRET_DEFAULT)
  device = device or device_kind()
  key = make_key(device=device, backend=backend, dtype=dtype, head_dim=head_dim, q_len=q_len,
                 kv_len=kv_len, mask_kind=mask_kind, normalizer=normalizer)
  path = cache_path(cache_dir)
  cached = lookup(path, key)
  if cached is not None:
    return cached
  base = heuristic(backend, head_dim)
  if enabled is None:
    enabled = autotune_enabled()
  if not enabled or measure is None:
    return base
  fwd, bwd = candidates(backend, head_dim)
  best, timings = tune(measure, fwd, bwd, base)
  finite = {k: v for k, v in timings.items() if math.isfinite(v)}
  if not finite:  # nothing ran: do not cache a guess
    return base
  save_entry(path, key, best, extra={"timings_s": finite})
  return {f: best[f] for f in FIELDS}


# ------------------------------------------------------------------------------------------
# Timing one candidate.


def measure_candidate(attention_fn: Callable[..., Any], cfg_dict: dict, *, q, k, v, mask,
                      normalizer, backend, direction="fwd", interpret=False,
                      runs: int = 5) -> float:
  """Median seconds of one candidate on random inputs shaped like the call.

  ``attention_fn(q, k, v, **kwargs)`` is the kernel's entry point (``flash_attention``), run
  with ``cfg_dict`` (tiles and launch parameters) on top of the call's mask, normaliser and
  driver; ``direction`` "fwd" times the forward, "bwd" the forward and backward.

  Usually called while the user's function is being traced; the candidate runs in a helper
  thread, which starts with JAX's trace state empty, so it executes for real instead of being
  staged into the caller's computation. Only the shapes and dtypes of ``q, k, v`` are used; a
  mask with traced leaves is replaced by none.
  """
  static_mask = mask if mask is not None and all(
      not isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(mask)) else None
  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
  kw = dict(mask=static_mask, normalizer=normalizer, kernel_backend=backend,
            interpret=interpret, **cfg_dict)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    return pool.submit(_run_candidate, attention_fn, specs, kw, direction, runs).result()


def _run_candidate(attention_fn, specs, kw, direction, runs):
  try:
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(s.shape, np.float32)).astype(s.dtype)
            for s in specs]
    if direction == "fwd":
      fn = jax.jit(lambda a, b_, c: attention_fn(a, b_, c, **kw))
    else:
      def loss(a, b_, c):
        return attention_fn(a, b_, c, **kw).astype(jnp.float32).sum()
      fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t0)
    return float(np.median(times))
  except Exception:  # a candidate that does not compile (shared memory, registers) loses
    return math.inf
