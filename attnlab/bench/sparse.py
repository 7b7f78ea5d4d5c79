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

MoBA with ``routing="block"`` (one selection per query block, its first query's gate) runs on
the tile tables: the ``chunked`` rows time ``implementation="chunked"`` (tile = MoBA block, the
selection as per-(batch, head) tile states: only the selected tiles are visited) at the same
shapes and densities. The Pallas kernels in interpret mode (CPU) are far too slow to time at
8k, so at a small shape (``--pallas_seq``) the forward kernel's tile counter
(``debug_counts``) is compared with the selected (query block, key block) pairs, and the
pallas output with the chunked one.
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
    rows.append(_block_row(q, k, v, causal, base, block_size, top_k, nb, seq, runs,
                           rows[0] if dense else None))
  return rows


def _block_row(q, k, v, causal, base, block_size, top_k, nb, seq, runs, dense_row) -> dict:
  """MoBA routing='block' on the chunked tile tables: time, memory, selected tiles."""
  row = _measure(f"{ROUTED}_block_chunked_tiles", lambda q, k, v: attnlab.attention(
      q, k, v, mechanism=ROUTED, implementation="chunked", mask=causal, block_size=block_size,
      top_k=top_k, routing="block"), base, q, k, v, runs)
  route = jax.jit(lambda q, k: moba_lib.moba_block_route(q, k, causal, block_size, top_k))
  t = harness.time_fn(route, q, k, warmup=1, runs=runs)
  selected = int(np.asarray(route(q, k)).sum())
  heads = q.shape[2]
  row.update(block_size=block_size, top_k=top_k, num_blocks=nb, routing="block",
             density=top_k * block_size / seq, routing_median_s=t["median_s"],
             routing_share=t["median_s"] / row["median_s"], selected_tiles=selected,
             dense_causal_tiles=heads * nb * (nb + 1) // 2)
  if dense_row is not None:
    row["speedup_vs_chunked_dense"] = dense_row["median_s"] / row["median_s"]
  print(f"  block routing top_k {top_k}: selected tiles {selected} of "
        f"{row['dense_causal_tiles']} causal; routing {row['routing_share']:.1%}"
        + (f"; speedup {row['speedup_vs_chunked_dense']:.2f}x" if dense_row else ""),
        flush=True)
  return row


def pallas_visits(seq: int, heads: int, head_dim: int, block_size: int,
                  top_ks: list[int]) -> list[dict]:
  """Pallas interpret-mode forward: tiles visited (kernel counter) vs selected blocks."""
  shape = (1, seq, heads, head_dim)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  q, k, v = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)
  causal = masks.CausalMask()
  nb = -(-seq // block_size)
  out = []
  for top_k in top_ks:
    kw = dict(mask=causal, block_size=block_size, top_k=top_k, routing="block")
    got, visited = jax.jit(lambda q, k, v: moba_lib.moba_pallas(  # noqa: B023
        q, k, v, debug_counts=True, **kw))(q, k, v)
    want = jax.jit(lambda q, k, v: moba_lib.moba_attention(q, k, v, **kw))(q, k, v)  # noqa: B023
    selected = np.asarray(moba_lib.moba_block_route(q, k, causal, block_size, top_k))
    visited = np.asarray(visited)
    tile = moba_lib.pallas_tile(block_size)
    row = {"implementation": f"{ROUTED}_block_pallas_interpret", "seq": seq, "heads": heads,
           "head_dim": head_dim, "block_size": block_size, "kernel_tile": tile,
           "top_k": top_k, "pass": "fwd", "tiles_visited": int(visited.sum()),
           "selected_blocks": int(selected.sum()),
           "visits_equal_selected_per_q_block": bool(np.array_equal(
               visited, selected.sum(-1) * (block_size // tile) ** 2)),
           "dense_causal_tiles": heads * nb * (nb + 1) // 2,
           "max_abs_diff_vs_chunked": float(jnp.abs(got - want).max())}
    print(f"  pallas interpret seq {seq} top_k {top_k}: visited {row['tiles_visited']} tiles, "
          f"selected {row['selected_blocks']} blocks (dense causal "
          f"{row['dense_causal_tiles']}); |pallas - chunked| {row['max_abs_diff_vs_chunked']:.2e}",
          flush=True)
    out.append(row)
  return out


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
  p.add_argument("--pallas_seq", type=int, default=512,
                 help="sequence of the pallas interpret tile-visit check (0: skip)")
  p.add_argument("--pallas_block_size", type=int, default=64)
  p.add_argument("--pallas_top_k", type=int, nargs="+", default=[1, 2])
  p.add_argument("--out", default="results")
  a = p.parse_args(argv)
  rows = []
  for seq in a.seq:
    print(f"seq {seq}:", flush=True)
    rows += run(seq, a.heads, a.head_dim, a.block_size, a.density, a.runs, not a.no_dense)
  visits = []
  if a.pallas_seq:
    print(f"pallas interpret tile visits, seq {a.pallas_seq}:", flush=True)
    visits = pallas_visits(a.pallas_seq, a.heads, a.head_dim, a.pallas_block_size,
                           a.pallas_top_k)
  print()
  harness.print_table(rows, ["implementation", "seq", "top_k", "median_s", "temp_mib",
                             "routing_share", "speedup_vs_chunked_dense"])
  if visits:
    harness.print_table(visits, ["implementation", "seq", "top_k", "tiles_visited",
                                 "selected_blocks", "dense_causal_tiles",
                                 "max_abs_diff_vs_chunked"])
  notes = ("routing='token' rows: attnlab/core/mechanisms/_grid.routed_block_attention "
           "(pure JAX row gathers, custom_vjp). routing='block' rows: the selection as "
           "per-(batch, head) tile tables of core/chunked.py (tile = MoBA block); "
           "pallas_visits: the Pallas forward kernel (interpret mode) tile counter vs the "
           "selected (query block, key block) pairs.")
  path = harness.write_json("sparse", {"rows": rows, "pallas_visits": visits, "notes": notes},
                            a.out)
  print(f"wrote {path}")
