"""The "triton" driver: GPU (Pallas Triton lowering), and the default in CPU interpret mode.

Layout ``[B, T, heads, D]``. Grid ``(n_q_blocks, B, heads)`` for the forward and dq kernels
(heaviest q rows first) and ``(n_k_blocks, B, kv_heads)`` for dk/dv. Each program loops
(``lax.fori_loop`` with a dynamic trip count, ``two_loops``) over the non-empty tiles of its
row of the tile table, reading K/V (or Q/dO) tiles from whole-sequence refs with ``pl.ds``
(``operands.selector``): first one group of tiles (FULL: no elementwise mask; or PARTIAL when the
table lists those first), then the other. Table and counts are ordinary whole-array int32
inputs read with scalar loads (``table_inputs``): the Triton backend has no scalar prefetch
and no scratch memory, so accumulators are loop carries.

Here: grid and program coordinates, the table inputs and in-kernel tile loops, launch
parameters (``num_warps`` / ``num_stages``) and the ``pallas_call``.
"""

from __future__ import annotations

import functools

from jax import lax
from jax.experimental import pallas as pl

from attnlab.kernels.flash.config import Config, Coords, Operand, table_index


def grid(cfg: Config, kind: str) -> tuple[int, ...]:
  rows = cfg.n_rows(kind)
  if kind == "dkv":
    return (rows, cfg.batch, cfg.kv_heads)
  return (rows, cfg.batch, cfg.heads)


def coords(cfg: Config, kind: str, idx, pref=None) -> Coords:
  """Program ids -> block coordinates (``pref`` is unused: no scalar prefetch)."""
  del pref
  if kind == "dkv":
    j, b, kh = idx
    return Coords(b=b, kh=kh, j=j)
  p0, b, h = idx
  # Heaviest rows first (for causal masks the last q blocks see the most keys).
  return Coords(b=b, h=h, kh=lax.div(h, cfg.groups), i=cfg.n_rows(kind) - 1 - p0)


def scalar_spec(shape: tuple[int, ...]) -> pl.BlockSpec:
  """A small int32 table passed whole to every program."""
  nd = len(shape)
  return pl.BlockSpec(shape, lambda *_: (0,) * nd)


def table_inputs(tables) -> list:
  """The tile table and its per-row counts as ordinary kernel inputs."""
  table, nfirst, ntot = tables
  return [(Operand("table", ("n",), scalar=True), table),
          (Operand("nfirst", ("n",), scalar=True), nfirst),
          (Operand("ntot", ("n",), scalar=True), ntot)]


def row_counts(cfg: Config, kind: str, refs: dict, pref, b, r):
  """(tiles in the first group, non-empty tiles) of row ``r``."""
  del pref
  n = table_index(cfg, kind, b, r)
  return refs["nfirst"][n], refs["ntot"][n]


def tile_index_fn(cfg: Config, kind: str, refs: dict, b, r):
  """t -> index of the t-th tile of row r."""
  if cfg.is_contiguous(kind):
    start = refs["table"][table_index(cfg, kind, b, r, 0)]
    return lambda t: start + t
  return lambda t: refs["table"][table_index(cfg, kind, b, r, t)]


def two_loops(cfg: Config, kind: str, n_first, n_tot, body, init):
  """The first group of tiles, then the second (one is FULL, one PARTIAL).

  ``body(t, carry, masked)`` processes the t-th tile of the row."""
  m1 = cfg.first_masked(kind)
  carry = lax.fori_loop(0, n_first, lambda t, c: body(t, c, m1), init)
  return lax.fori_loop(n_first, n_tot, lambda t, c: body(t, c, not m1), carry)


def compiler_params(cfg: Config, kind: str):
  from jax.experimental.pallas import triton as plgpu
  if kind == "fwd":
    return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  return plgpu.CompilerParams(num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd)


def pallas_call(cfg: Config, kind: str, body, names, ops, args, tables, in_specs, out_specs,
                out_shape, cost):
  """Launch kernel body ``body`` on ``args`` (which already hold the tables)."""
  del tables  # passed as inputs, see table_inputs
  kernel = functools.partial(body, cfg, tuple(names), ops, 0)
  fn = pl.pallas_call(kernel, out_shape=out_shape, grid=grid(cfg, kind), in_specs=in_specs,
                      out_specs=out_specs, interpret=cfg.interpret,
                      compiler_params=compiler_params(cfg, kind), cost_estimate=cost,
                      name=f"attnlab_flash_{kind}")
  return fn(*args)
