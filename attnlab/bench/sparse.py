"""``python -m attnlab.bench sparse``: routed block-sparse attention (MoBA) vs dense causal.

Forward+backward, causal, float32, batch 1, 2 heads, head_dim 64 (CPU-sized), at each
``--seq``: MoBA at ``--density`` (``top_k = density * num_blocks`` key blocks of
``--block_size`` per query, MoBA's sparsity measure ``top_k * block_size / T``; the block-sparse
"chunked" path of ``attnlab.core.mechanisms.moba``) against the chunked dense causal attention
(``attnlab.attention(..., implementation="chunked", is_causal=True)``) on the same inputs in the
same run. Also reported: the routing alone (gate + top-k, forward) as a share of MoBA's time,
compiled temporary memory (``memory_analysis``), and the tile counts of the block-sparse
engine: selected (query, block) pairs vs the computed ``[tile, block]`` tiles (rows padded per
block; the static tile count includes the padding bound).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import attnlab
from attnlab.bench import harness
from attnlab.core import masks
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import moba as moba_lib

ROUTED = moba_lib.__name__.rsplit(".", 1)[-1]


def _loss_and_grad(fn):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def run(seq: int, heads: int, head_dim: int, block_size: int, densities: list[float],
        runs: int, dense: bool) -> list[dict]:
  nb = -(-seq // block_size)
  shape = (1, seq, heads, head_dim)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)
  causal = masks.CausalMask()
  base = {"seq": seq, "batch": 1, "heads": heads, "head_dim": head_dim, "dtype": "float32",
          "causal": True, "pass": "fwd+bwd"}
  rows = []
  if dense:
    rows.append(_measure("chunked_dense_causal", lambda q, k, v: attnlab.attention(
        q, k, v, implementation="chunked", is_causal=True), base, q, k, v, runs))
  for density in densities:
    top_k = max(1, int(round(density * nb)))
    row = _measure(ROUTED, lambda q, k, v: moba_lib.moba_attention(  # noqa: B023
        q, k, v, mask=causal, block_size=block_size, top_k=top_k), base, q, k, v, runs)
    row.update(block_size=block_size, top_k=top_k, num_blocks=nb,
               density=top_k * block_size / seq,
               density_of_causal=top_k / ((nb + 1) / 2))
    row.update(_routing(q, k, causal, seq, heads, block_size, top_k, nb, runs, row))
    if dense:
      row["speedup_vs_chunked_dense"] = rows[0]["median_s"] / row["median_s"]
      print(f"  speedup vs chunked dense causal: {row['speedup_vs_chunked_dense']:.2f}x",
            flush=True)
    rows.append(row)
  return rows


def _measure(name, fn, base, q, k, v, runs) -> dict:
  jitted = _loss_and_grad(fn)
  row = {"implementation": name, **base}
  row.update(harness.compiled_stats(jitted, q, k, v))
  row.update(harness.time_fn(jitted, q, k, v, warmup=1, runs=runs))
  row["temp_mib"] = row.get("temp_bytes", 0) / harness.MIB
  print(f"  {name}: {row['median_s']:.3f} s, temp {row['temp_mib']:.1f} MiB", flush=True)
  return row


def _routing(q, k, causal, seq, heads, block_size, top_k, nb, runs, row) -> dict:
  """Routing time (gate + top-k, forward) and the tile counts of one MoBA configuration."""
  route = jax.jit(lambda q, k: moba_lib.moba_route(q, k, causal, block_size, top_k))
  t = harness.time_fn(route, q, k, warmup=1, runs=runs)
  sel = np.asarray(route(q, k))  # [1, H, T, top_k]
  pairs = int((sel >= 0).sum())
  bq = min(block_size, seq)
  tiles = heads * (-(-(seq * top_k + nb * (bq - 1)) // bq))
  used = int(np.sum(jax.vmap(lambda s: _grid.tile_layout(s, nb, bq)[2])(jnp.asarray(sel[0]))))
  out = dict(routing_median_s=t["median_s"], routing_share=t["median_s"] / row["median_s"],
             selected_pairs=pairs, selected_block_tiles_ideal=pairs / bq,
             tiles_static_bound=tiles, tiles_with_rows=used,
             dense_causal_tiles=heads * nb * (nb + 1) // 2 * (block_size // bq))
  print(f"  top_k {top_k}: routing {t['median_s']:.3f} s fwd ({out['routing_share']:.1%} of "
        f"fwd+bwd); tiles with rows {used} (ideal {pairs / bq:.0f}, static bound {tiles}, "
        f"dense causal {out['dense_causal_tiles']})", flush=True)
  return out


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(prog="python -m attnlab.bench sparse", description=__doc__)
  p.add_argument("--seq", type=int, nargs="+", default=[8192, 32768])
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--block_size", type=int, default=512)
  p.add_argument("--density", type=float, nargs="+", default=[0.125, 0.0625],
                 help="top_k * block_size / T (0.0625: 1/8 of the causal triangle's blocks)")
  p.add_argument("--runs", type=int, default=2)
  p.add_argument("--no_dense", action="store_true", help="skip the dense baseline")
  p.add_argument("--out", default="results")
  a = p.parse_args(argv)
  rows = []
  for seq in a.seq:
    print(f"seq {seq}:", flush=True)
    rows += run(seq, a.heads, a.head_dim, a.block_size, a.density, a.runs, not a.no_dense)
  print()
  harness.print_table(rows, ["implementation", "seq", "top_k", "median_s", "temp_mib",
                             "routing_share", "speedup_vs_chunked_dense"])
  notes = ("MoBA block-sparse path = attnlab/core/mechanisms/_grid.routed_block_attention "
           "(pure JAX gathers, custom_vjp); the Pallas / chunked tile tables are not used "
           "(data-dependent tables need kernel changes), so no pallas tile-visit counts.")
  path = harness.write_json("sparse", {"rows": rows, "notes": notes}, a.out)
  print(f"wrote {path}")
