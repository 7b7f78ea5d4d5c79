"""``python -m attnlab.bench core``: dense ("xla") vs "chunked" softmax attention.

Causal forward+backward (the foundation issue's figure: batch 1, 8 heads, head_dim 64,
float32, seq 8192 on CPU). Reports compiled temporary memory (``memory_analysis``), XLA's
FLOP estimate, and the median time of N runs after warm-up.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import attnlab
from attnlab.bench import harness


def _loss_and_grad(implementation: str, causal: bool, block: int):
  kw = {"block_q": block, "block_k": block} if implementation == "chunked" else {}

  def loss(q, k, v):
    out = attnlab.attention(q, k, v, is_causal=causal, implementation=implementation, **kw)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def run(seq: int, batch: int, heads: int, head_dim: int, dtype: str, causal: bool, runs: int,
        block: int, implementations: list[str]) -> list[dict]:
  shape = (batch, seq, heads, head_dim)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, shape, jnp.dtype(dtype)) for kk in keys)
  rows = []
  for impl in implementations:
    fn = _loss_and_grad(impl, causal, block)
    row = {"implementation": impl, "seq": seq, "batch": batch, "heads": heads,
           "head_dim": head_dim, "dtype": dtype, "causal": causal, "pass": "fwd+bwd",
           "block": block if impl == "chunked" else None}
    row.update(harness.compiled_stats(fn, q, k, v))
    row.update(harness.time_fn(fn, q, k, v, warmup=1, runs=runs))
    row["temp_mib"] = row.get("temp_bytes", 0) / harness.MIB
    rows.append(row)
    print(f"  {impl}: {row['median_s']:.3f} s, temp {row['temp_mib']:.1f} MiB", flush=True)
  return rows


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(prog="python -m attnlab.bench core", description=__doc__)
  p.add_argument("--seq", type=int, nargs="+", default=[8192])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--non_causal", action="store_true")
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--block", type=int, default=256)
  p.add_argument("--implementations", nargs="+", default=["xla", "chunked"])
  p.add_argument("--out", default="results")
  a = p.parse_args(argv)
  rows = []
  for seq in a.seq:
    print(f"seq {seq}:", flush=True)
    rows += run(seq, a.batch, a.heads, a.head_dim, a.dtype, not a.non_causal, a.runs, a.block,
                a.implementations)
  print()
  harness.print_table(rows, ["implementation", "seq", "causal", "block", "median_s", "temp_mib",
                             "xla_flops"])
  by = {(r["seq"], r["implementation"]): r for r in rows}
  for seq in a.seq:
    if (seq, "xla") in by and (seq, "chunked") in by:
      ratio = by[(seq, "chunked")]["median_s"] / by[(seq, "xla")]["median_s"]
      print(f"seq {seq}: chunked/xla time = {ratio:.2f}x; chunked temp = "
            f"{by[(seq, 'chunked')]['temp_mib']:.1f} MiB (targets <= 0.6x, <= 64 MiB)")
  path = harness.write_json("core", {"rows": rows}, a.out)
  print(f"wrote {path}")
