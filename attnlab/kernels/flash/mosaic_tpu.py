"""The "mosaic" driver: TPU (Pallas Mosaic lowering), tested on CPU in TPU interpret mode.

Layout ``[B, heads, T, D]``. Grid ``(B, heads, n_q_blocks, steps)`` for the forward and dq
kernels and ``(B, kv_heads, n_k_blocks, groups * steps)`` for dk/dv (the last axis walks the
query heads of the kv head's group, each over its steps). The tile table and its per-row
counts are scalar-prefetched (``pltpu.PrefetchScalarGridSpec``, ``NUM_PREFETCH`` refs ahead of
the operands) and drive the K/V (or Q/dO) ``index_map``: grid step t of a row visits its t-th
tile. Steps past a row's count repeat the last tile index (so no new DMA is issued) and are
skipped with ``pl.when`` (``two_whens``). Accumulators live in VMEM scratch
(``scratch_shapes``), initialised on a row's first step and written out on its last; the
grid's last axis is "arbitrary" (sequential), the others "parallel".

Here: grid and step coordinates, SMEM specs for small tables, the in-kernel step guard, the
scratch of each kernel, compiler parameters and the ``pallas_call``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attnlab.kernels.flash.config import F32, LANES, Config, Coords, table_index

NUM_PREFETCH = 3  # scalar-prefetched refs: table, n_first, n_tot


def grid(cfg: Config, kind: str) -> tuple[int, ...]:
  rows = cfg.n_rows(kind)
  if kind == "dkv":
    return (cfg.batch, cfg.kv_heads, rows, cfg.groups * cfg.steps(kind))
  return (cfg.batch, cfg.heads, rows, cfg.steps(kind))


def coords(cfg: Config, kind: str, idx, pref) -> Coords:
  """Grid indices + scalar-prefetch refs -> block coordinates of this step's tile."""
  g_ = cfg.groups
  if kind == "dkv":
    b, kh, j, s = idx
    steps = cfg.steps(kind)
    # lax.div / lax.rem (truncating; indices are >= 0): jnp's floor division emits sign ops.
    g, t = lax.div(s, steps), lax.rem(s, steps)
    i = pref[0][table_index(cfg, kind, b, j, t)]
    return Coords(b=b, kh=kh, h=kh * g_ + g, g=g, i=i, j=j, t=t)
  b, h, i, t = idx
  j = pref[0][table_index(cfg, kind, b, i, t)]
  return Coords(b=b, h=h, kh=lax.div(h, g_), i=i, j=j, t=t)


def scalar_spec(shape: tuple[int, ...]) -> pl.BlockSpec:
  """A small int32 table, whole in SMEM."""
  del shape
  from jax.experimental.pallas import tpu as pltpu
  return pl.BlockSpec(memory_space=pltpu.SMEM)


def table_inputs(tables) -> list:
  """No extra operands: the tables are scalar-prefetched (see ``pallas_call``)."""
  del tables
  return []


def row_counts(cfg: Config, kind: str, refs: dict, pref, b, r):
  """(tiles in the first group, non-empty tiles) of row ``r``."""
  del refs
  n = table_index(cfg, kind, b, r)
  return pref[1][n], pref[2][n]


def two_whens(cfg: Config, kind: str, t, n_first, n_tot, run):
  """Grid step t runs its tile with or without the mask (``run(masked)``), or nothing."""
  m1 = cfg.first_masked(kind)
  pl.when(t < n_first)(lambda: run(m1))
  pl.when((t >= n_first) & (t < n_tot))(lambda: run(not m1))


def scratch_shapes(cfg: Config, kind: str) -> list:
  """(name, VMEM/SMEM shape) of each kernel's accumulators."""
  from jax.experimental.pallas import tpu as pltpu
  bq, bk = cfg.blocks(kind)
  if kind == "fwd":
    return [("m_scr", pltpu.VMEM((bq, LANES), F32)), ("l_scr", pltpu.VMEM((bq, LANES), F32)),
            ("acc_scr", pltpu.VMEM((bq, cfg.v_dim), F32)),
            ("cnt_scr", pltpu.SMEM((2,), jnp.int32))]
  if kind == "dq":
    return [("dq_scr", pltpu.VMEM((bq, cfg.head_dim), F32)),
            ("rows_scr", pltpu.VMEM((bq, LANES), F32))]
  return [("dk_scr", pltpu.VMEM((bk, cfg.head_dim), F32)),
          ("dv_scr", pltpu.VMEM((bk, cfg.v_dim), F32)),
          ("cols_scr", pltpu.VMEM((1, bk), F32))]


def compiler_params(cfg: Config, kind: str):
  del cfg, kind
  from jax.experimental.pallas import tpu as pltpu
  sem = ("parallel", "parallel", "parallel", "arbitrary")
  return pltpu.CompilerParams(dimension_semantics=sem)


def pallas_call(cfg: Config, kind: str, body, names, ops, args, tables, in_specs, out_specs,
                out_shape, cost):
  """Launch kernel body ``body``: tables scalar-prefetched, then ``args``, then scratch."""
  from jax.experimental.pallas import tpu as pltpu
  table, nfirst, ntot = tables
  scratch = scratch_shapes(cfg, kind)
  names = list(names) + [n for n, _ in scratch]
  kernel = functools.partial(body, cfg, tuple(names), ops, NUM_PREFETCH)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=NUM_PREFETCH, grid=grid(cfg, kind), in_specs=in_specs,
      out_specs=out_specs, scratch_shapes=[s for _, s in scratch])
  fn = pl.pallas_call(kernel, out_shape=out_shape, grid_spec=grid_spec,
                      interpret=cfg.interpret, compiler_params=compiler_params(cfg, kind),
                      cost_estimate=cost, name=f"attnlab_flash_{kind}")
  return fn(table, nfirst, ntot, *args)
