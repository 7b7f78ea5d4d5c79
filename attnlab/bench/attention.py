"""``python -m attnlab.bench attention``: attnlab's Pallas flash kernels vs other attention.

Per shape (batch x heads = 32 by default, head_dim 64 / 128, seq 1k..32k, causal and not,
softmax and sigmoid, forward and forward+backward) it times:

* ``pallas``     attnlab's Pallas kernel (``attnlab.attention(implementation="pallas")``);
* ``chunked``    attnlab's pure-JAX online-softmax implementation;
* ``xla``        ``jax.nn.dot_product_attention(implementation="xla")`` (softmax) or attnlab's
                 dense sigmoid reference (sigmoid);
* ``cudnn``      ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU only);
* ``jax_pallas`` JAX's own Pallas flash attention (``jax.experimental.pallas.ops.gpu.attention``
                 on GPU, ``ops.tpu.flash_attention`` on TPU);
* ``tokamax``    ``tokamax.dot_product_attention`` when tokamax is installed.

Reported per row: median seconds of ``--runs`` timed calls after warm-up, useful TFLOP/s
(FLOPs of masked-out pairs not counted: causal counts ``T(T+1)/2`` pairs; backward counted as
2.5x the forward, the FlashAttention-2 convention), and the compiled temporary memory
(``memory_analysis().temp_size_in_bytes``). The JSON lands in
``<out>/<device>/attention-<timestamp>.json``. The footer prints the device targets (bf16,
head_dim 128, seq 8192): forward >= 0.9x cuDNN, forward+backward >= 0.8x cuDNN, and sigmoid
>= 1.15x softmax (both attnlab pallas), when the rows exist.

On CPU the Pallas kernels only run interpreted, so ``pallas`` (and ``jax_pallas``) rows are
skipped unless ``--interpret`` is given (then their rows are labelled "interpret").
``--quick`` uses tiny shapes (a smoke test); ``--target`` only the target shape.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

import attnlab
from attnlab.bench import harness

SEQS = (1024, 2048, 4096, 8192, 16384, 32768)
HEAD_DIMS = (64, 128)
IMPLEMENTATIONS = ("pallas", "chunked", "xla", "cudnn", "jax_pallas", "tokamax")
SOFTMAX_ONLY = ("cudnn", "jax_pallas", "tokamax")
TARGET = dict(seq=8192, head_dim=128, dtype="bfloat16", fwd_vs_cudnn=0.9,
              fwd_bwd_vs_cudnn=0.8, sigmoid_vs_softmax=1.15)


class Skip(Exception):
  """This implementation does not run here (platform, package, mechanism)."""


def useful_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool,
                 mode: str) -> float:
  """FLOPs of the allowed (q, k) pairs: 2 matmuls x 2 FLOPs forward; backward 2.5x that."""
  pairs = q_len * (q_len + 1) / 2 if causal and q_len == kv_len else q_len * kv_len
  fwd = 4.0 * batch * heads * pairs * head_dim
  return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def _attention_fn(impl: str, normalizer: str, causal: bool, head_dim: int,
                  platform: str) -> tuple[Callable[..., Any], str]:
  """``fn(q, k, v) -> out`` on ``[B, T, H, D]`` arrays, and a note."""
  if normalizer == "sigmoid" and impl in SOFTMAX_ONLY:
    raise Skip("softmax only")
  note = ""
  if impl == "pallas":
    if platform == "cpu":
      note = "interpret"
    return (lambda q, k, v: attnlab.attention(
        q, k, v, mechanism=normalizer, implementation="pallas", is_causal=causal)), note
  if impl == "chunked":
    return (lambda q, k, v: attnlab.attention(
        q, k, v, mechanism=normalizer, implementation="chunked", is_causal=causal)), note
  if impl == "xla":
    if normalizer == "sigmoid":
      return (lambda q, k, v: attnlab.attention(
          q, k, v, mechanism="sigmoid", implementation="xla", is_causal=causal)), "attnlab dense"
    return (lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation="xla")), "jax.nn"
  if impl == "cudnn":
    if platform != "gpu":
      raise Skip("GPU only")
    return (lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation="cudnn")), "jax.nn"
  if impl == "jax_pallas":
    scale = 1.0 / math.sqrt(head_dim)
    if platform == "gpu":
      from jax.experimental.pallas.ops.gpu import attention as gpu_attention
      return (lambda q, k, v: gpu_attention.mha(
          q, k, v, None, sm_scale=scale, causal=causal)), "ops.gpu.attention"
    if platform == "tpu":
      from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

      def fn(q, k, v):  # the TPU kernel is [B, H, T, D]
        t = lambda x: x.transpose(0, 2, 1, 3)
        return t(tpu_flash.flash_attention(t(q), t(k), t(v), causal=causal, sm_scale=scale))
      return fn, "ops.tpu.flash_attention (+transposes)"
    raise Skip("needs a GPU or TPU")
  if impl == "tokamax":
    try:
      import tokamax  # noqa: F401
    except ImportError:
      raise Skip("tokamax not installed") from None
    return (lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=causal)), ""
  raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")


def _jitted(fn, mode: str):
  if mode == "fwd":
    return jax.jit(fn)

  def fwd_bwd(q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return vjp(ct)

  return jax.jit(fwd_bwd)


def run_one(impl: str, *, normalizer: str, causal: bool, mode: str, batch: int, heads: int,
            seq: int, head_dim: int, dtype: str, runs: int, warmup: int, platform: str,
            interpret_ok: bool) -> dict[str, Any]:
  row: dict[str, Any] = dict(implementation=impl, normalizer=normalizer, mode=mode,
                             causal=causal, batch=batch, heads=heads, seq=seq,
                             head_dim=head_dim, dtype=dtype)
  try:
    if platform == "cpu" and impl in ("pallas", "jax_pallas") and not interpret_ok:
      raise Skip("interpreted on CPU: pass --interpret to time it")
    if platform == "cpu" and impl == "jax_pallas":
      raise Skip("needs a GPU or TPU")
    fn, note = _attention_fn(impl, normalizer, causal, head_dim, platform)
  except Skip as e:
    row.update(status="skipped", note=str(e))
    return row
  row["note"] = note
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  shape = (batch, seq, heads, head_dim)
  q, k, v, ct = (jax.random.normal(kk, shape, jnp.float32).astype(dtype) for kk in keys)
  args = (q, k, v) if mode == "fwd" else (q, k, v, ct)
  try:
    compiled = _jitted(fn, mode).lower(*args).compile()
    try:
      mem = compiled.memory_analysis()
      row["temp_bytes"] = int(mem.temp_size_in_bytes)
      row["temp_mib"] = row["temp_bytes"] / harness.MIB
    except Exception as e:  # some backends do not report
      row["memory_error"] = repr(e)[:200]
    row.update(harness.time_fn(compiled, *args, warmup=warmup, runs=runs))
  except Exception as e:  # OOM, unsupported shape, lowering error: record and go on
    row.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
    return row
  flops = useful_flops(batch, heads, seq, seq, head_dim, causal, mode)
  row.update(status="ok", useful_flops=flops, tflops=flops / row["median_s"] / 1e12,
             median_ms=row["median_s"] * 1e3)
  return row


def target_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Speed ratios at the target shape (higher is better), where the rows exist."""
  ok = [r for r in rows if r.get("status") == "ok" and r["seq"] == TARGET["seq"]
        and r["head_dim"] == TARGET["head_dim"] and r["dtype"] == TARGET["dtype"]]
  by = {(r["implementation"], r["normalizer"], r["mode"], r["causal"]): r["median_s"] for r in ok}
  out = []
  for causal in (False, True):
    for mode, goal in (("fwd", TARGET["fwd_vs_cudnn"]), ("fwd+bwd", TARGET["fwd_bwd_vs_cudnn"])):
      a, b = by.get(("pallas", "softmax", mode, causal)), by.get(("cudnn", "softmax", mode, causal))
      if a and b:
        out.append(dict(name=f"pallas softmax {mode} vs cudnn", causal=causal, ratio=b / a,
                        target=goal))
    for mode in ("fwd", "fwd+bwd"):
      a, b = by.get(("pallas", "sigmoid", mode, causal)), by.get(("pallas", "softmax", mode, causal))
      if a and b:
        out.append(dict(name=f"pallas sigmoid vs softmax {mode}", causal=causal, ratio=b / a,
                        target=TARGET["sigmoid_vs_softmax"]))
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m attnlab.bench attention",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test)")
  p.add_argument("--target", action="store_true",
                 help="only the device target shape (bf16, head_dim 128, seq 8192)")
  p.add_argument("--out", default="results", help="output folder (default results/)")
  p.add_argument("--seq", type=int, nargs="+", default=None)
  p.add_argument("--head_dim", type=int, nargs="+", default=None)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU/TPU, float32 on CPU")
  p.add_argument("--causal", choices=("both", "causal", "noncausal"), default="both")
  p.add_argument("--normalizer", nargs="+", default=["softmax", "sigmoid"],
                 choices=("softmax", "sigmoid"))
  p.add_argument("--mode", nargs="+", default=["fwd", "fwd+bwd"], choices=("fwd", "fwd+bwd"))
  p.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS),
                 choices=IMPLEMENTATIONS)
  p.add_argument("--runs", type=int, default=None, help="timed runs (median); default 10, 2 quick")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--interpret", action="store_true",
                 help="on CPU also time the interpreted Pallas kernels")
  p.add_argument("--no_autotune", action="store_true",
                 help="use cached/heuristic kernel blocks, never measure candidates")
  return p


def main(argv: list[str]) -> dict[str, Any]:
  a = _parser().parse_args(argv)
  platform = jax.default_backend()
  if a.no_autotune:
    os.environ["ATTNLAB_AUTOTUNE"] = "0"
  dtype = a.dtype or (TARGET["dtype"] if a.target or platform != "cpu" else "float32")
  if a.quick:
    seqs, dims, batch, heads = a.seq or [128, 256], a.head_dim or [64], 1, 2
    runs = a.runs or 2
  elif a.target:
    seqs, dims, batch, heads = [TARGET["seq"]], [TARGET["head_dim"]], a.batch, a.heads
    runs = a.runs or 10
  else:
    seqs, dims, batch, heads = a.seq or list(SEQS), a.head_dim or list(HEAD_DIMS), a.batch, a.heads
    runs = a.runs or 10
  causals = {"both": (False, True), "causal": (True,), "noncausal": (False,)}[a.causal]
  rows = []
  print(f"attention benchmark on {harness.device_info()['device_kind']} ({platform}), "
        f"jax {jax.__version__}, {dtype}, batch {batch} x heads {heads}", flush=True)
  for d in dims:
    for seq in seqs:
      for normalizer in a.normalizer:
        for causal in causals:
          for mode in a.mode:
            for impl in a.implementations:
              row = run_one(impl, normalizer=normalizer, causal=causal, mode=mode, batch=batch,
                            heads=heads, seq=seq, head_dim=d, dtype=dtype, runs=runs,
                            warmup=a.warmup, platform=platform, interpret_ok=a.interpret)
              rows.append(row)
              if row["status"] == "ok":
                msg = (f"{row['median_ms']:.3f} ms  {row['tflops']:.2f} TFLOP/s  "
                       f"temp {row.get('temp_mib', float('nan')):.1f} MiB")
              else:
                msg = f"{row['status']}: {row.get('note') or row.get('error')}"
              print(f"  d{d} T{seq} {normalizer:7s} {'causal' if causal else 'full':6s} "
                    f"{mode:7s} {impl:10s} {msg}", flush=True)
  print()
  shown = [r for r in rows if r["status"] != "skipped"]
  if shown:
    harness.print_table(shown, ["normalizer", "implementation", "mode", "causal", "seq",
                                "head_dim", "median_ms", "tflops", "temp_mib", "status", "note"])
  ratios = target_ratios(rows)
  print()
  if ratios:
    print(f"targets at {TARGET['dtype']}, head_dim {TARGET['head_dim']}, seq {TARGET['seq']} "
          "(speed ratio, higher is better):")
    for r in ratios:
      flag = "ok" if r["ratio"] >= r["target"] else "BELOW TARGET"
      print(f"  {r['name']:34s} {'causal' if r['causal'] else 'full':6s} "
            f"{r['ratio']:.3f}x (target >= {r['target']}x) {flag}")
  else:
    print(f"targets: need pallas/cudnn rows at {TARGET['dtype']}, head_dim "
          f"{TARGET['head_dim']}, seq {TARGET['seq']} (run on a GPU with --target)")
  payload = dict(args=vars(a), dtype=dtype, batch=batch, heads=heads, rows=rows,
                 target=TARGET, ratios=ratios)
  path = harness.write_json("attention", payload, a.out)
  print(f"wrote {path}")
  return dict(path=path, rows=rows, ratios=ratios)
