"""``python -m attnlab.bench linear``: chunked linear attention vs chunked softmax, and the
decode state of the linear / recurrent mechanisms.

1. Causal forward+backward (batch 1, 8 heads, head_dim 64, float32; seq 4k / 16k / 32k on
   CPU): ``attnlab.core.linear`` (elu+1 linear attention, chunked, C = 64; optionally GLA /
   gated DeltaNet) against ``attnlab.attention(implementation="chunked")`` softmax. Median
   time of N runs after a warm-up and compiled temporary bytes (``memory_analysis``).
2. Decode state bytes (batch 1, d_model 512, 8 heads) of every module built on the linear core
   (their ``init_cache``) at each sequence length, against softmax attention's KV cache.

Writes ``results/<device>/linear-<utc>.json``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

import attnlab
import attnlab.nn
from attnlab.bench import harness
from attnlab.core.linear import feature_maps, linear_attention
from attnlab.nn.mechanisms._linear_base import LinearAttention



def linear_modules() -> list[str]:
  """Registered attention modules built on the linear core (``LinearAttention`` subclasses)."""
  return [n for n in attnlab.nn.list_attention_mechanisms()
          if issubclass(attnlab.nn.get_attention_module(n), LinearAttention)]


def _loss_and_grad(kind: str, chunk: int, block: int):
  def attend(q, k, v):
    if kind == "softmax_chunked":
      return attnlab.attention(q, k, v, is_causal=True, implementation="chunked",
                               block_q=block, block_k=block)
    if kind == "linear_chunked":
      return linear_attention(feature_maps.elu1(q), feature_maps.elu1(k), v, normalize=True,
                              chunk_size=chunk)
    if kind == "gla_chunked":  # per-channel decay from k (stand-in gate)
      return linear_attention(q * q.shape[-1] ** -0.5, k, v, chunk_size=chunk,
                              decay=jax.nn.log_sigmoid(k.astype(jnp.float32)) / 16.0)
    if kind == "gated_deltanet_chunked":  # WY form, scalar decay and beta from v
      kn = feature_maps.l2(k)
      g = jax.nn.log_sigmoid(v[..., 0].astype(jnp.float32)) / 16.0
      return linear_attention(q * q.shape[-1] ** -0.5, kn, v, chunk_size=chunk, decay=g,
                              beta=jax.nn.sigmoid(v[..., 1].astype(jnp.float32)))
    raise ValueError(f"unknown kind {kind!r}")

  def loss(q, k, v):
    return jnp.sum(attend(q, k, v).astype(jnp.float32) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def time_rows(seq: int, heads: int, head_dim: int, runs: int, chunk: int, block: int,
              kinds: list[str]) -> list[dict]:
  shape = (1, seq, heads, head_dim)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)
  rows = []
  for kind in kinds:
    fn = _loss_and_grad(kind, chunk, block)
    row = {"kind": kind, "seq": seq, "batch": 1, "heads": heads, "head_dim": head_dim,
           "dtype": "float32", "causal": True, "pass": "fwd+bwd",
           "chunk": block if kind == "softmax_chunked" else chunk}
    row.update(harness.compiled_stats(fn, q, k, v))
    row.update(harness.time_fn(fn, q, k, v, warmup=1, runs=runs))
    row["temp_mib"] = row.get("temp_bytes", 0) / harness.MIB
    rows.append(row)
    print(f"  {kind}: {row['median_s']:.3f} s, temp {row['temp_mib']:.1f} MiB", flush=True)
  return rows


def state_rows(seqs: list[int], d_model: int, heads: int) -> list[dict]:
  rows = []
  for name in ["softmax"] + linear_modules():
    cls = attnlab.nn.get_attention_module(name)
    kw = {"causal": True}
    if name == "softmax":
      kw["mechanism"] = "softmax"
    mod = cls(d_model, heads, rngs=nnx.Rngs(0), **kw)
    for seq in seqs:
      mod.init_cache(1, seq)
      cache = nnx.state(mod, nnx.Cache)
      nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)
                   if x.ndim > 0)  # the scalar cache index is not state
      rows.append({"mechanism": name, "seq": seq, "state_bytes": int(nbytes),
                   "bytes_per_token": nbytes / seq})
    print(f"  {name}: {rows[-1]['state_bytes']} bytes at {seqs[-1]}", flush=True)
  return rows


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(prog="python -m attnlab.bench linear", description=__doc__)
  p.add_argument("--seq", type=int, nargs="+", default=[4096, 16384, 32768])
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--runs", type=int, default=2)
  p.add_argument("--chunk", type=int, default=64)
  p.add_argument("--block", type=int, default=256)
  p.add_argument("--kinds", nargs="+", default=["linear_chunked", "softmax_chunked"],
                 help="also: gla_chunked gated_deltanet_chunked")
  p.add_argument("--out", default="results")
  a = p.parse_args(argv)
  rows = []
  for seq in a.seq:
    print(f"seq {seq}:", flush=True)
    rows += time_rows(seq, a.heads, a.head_dim, a.runs, a.chunk, a.block, a.kinds)
  print("decode state:", flush=True)
  states = state_rows(a.seq, a.heads * a.head_dim, a.heads)
  print()
  harness.print_table(rows, ["kind", "seq", "chunk", "median_s", "temp_mib", "xla_flops"])
  summary = []
  by = {(r["seq"], r["kind"]): r for r in rows}
  for seq in a.seq:
    lin, soft = by.get((seq, "linear_chunked")), by.get((seq, "softmax_chunked"))
    if lin and soft:
      s = {"seq": seq, "softmax_over_linear_time": soft["median_s"] / lin["median_s"],
           "linear_temp_mib": lin["temp_mib"], "softmax_temp_mib": soft["temp_mib"]}
      summary.append(s)
      print(f"seq {seq}: softmax/linear time = {s['softmax_over_linear_time']:.1f}x; "
            f"temp linear {lin['temp_mib']:.1f} MiB, softmax {soft['temp_mib']:.1f} MiB")
  path = harness.write_json("linear", {"rows": rows, "summary": summary,
                                       "decode_state": states}, a.out)
  print(f"wrote {path}")
