"""Tile tables: which (q block, k block) tiles each kernel visits, and in what order.

``tile_states`` is the mask's block summary (``attnlab.masks``: EMPTY / PARTIAL / FULL per
tile) fitted to the kernel's padded grid: the ragged last key block is PARTIAL (keys past
``kv_len`` are masked) and blocks entirely in the padding are EMPTY. ``build_table`` turns the
states into a per-row list of non-empty tile indices, FULL ones first (no elementwise mask)
and PARTIAL ones after (or the reverse), and ``table_layout`` picks the order that makes every
row a contiguous run when it can (the triton driver then computes tile indices instead of
loading them). Tables are numpy (trace-time) when the mask is static, and traced, one per
batch element, when it is data dependent (segment ids, lengths) or when the caller restricts
the states with data-dependent ``tile_states`` (``restrict``: MoBA's selected blocks).

The forward and dq kernels use tables over q-block rows; the dk/dv kernel uses the table of
the transposed states (rows = k blocks).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attnlab.core import chunked
from attnlab.core import masks as masks_lib
from attnlab.kernels.flash import masks


def tile_states(mask, tq: int, tk: int, bq: int, bk: int, nq: int, nk: int):
  """EMPTY/PARTIAL/FULL per tile, ``[B|1, nq, nk]`` (numpy when static).

  The mask's block summary, the ragged last key block demoted to PARTIAL, and blocks that lie
  entirely in the padding (when the padded length is a multiple of a larger block) EMPTY.
  """
  rq, rk = -(-tq // bq), -(-tk // bk)
  summary = None if mask is None else mask.block_summary(tq, tk, bq, bk)
  states = masks.tile_states(summary, tk, bk, rq, rk)
  xp = np if masks_lib.is_static(states) else jnp
  if (nq, nk) != (rq, rk):
    states = xp.pad(states, ((0, 0), (0, nq - rq), (0, nk - rk)),
                    constant_values=masks_lib.EMPTY)
  return states


def restrict(states, tile_states, batch: int, bq: int, bk: int):
  """``states [B|1, nq, nk]`` combined (``min``) with the caller's data-dependent
  ``tile_states(bq, bk, nq, nk) -> [B|1, nq, nk]`` (see ``flash_attention``)."""
  nq, nk = states.shape[1:]
  return chunked.combine_tile_states(states, tile_states(bq, bk, nq, nk), batch, nq, nk)


def build_table(states, partial_first: bool = False):
  """Per row of tiles: FULL tile indices, then PARTIAL ones (or the reverse), then padding.

  ``states [Bs, R, C]`` -> ``(table [Bs, R, steps], n_first [Bs, R], n_tot [Bs, R], steps)``
  where ``n_first`` counts the first group (FULL tiles, or PARTIAL ones when
  ``partial_first``). Indices are ascending within a group. Padding repeats the row's last
  non-empty index (so a TPU index_map issues no new DMA); for a row with no tile it is 0.
  ``steps`` is the largest row count when ``states`` is static, else ``C``. numpy in, numpy
  out.
  """
  xp = np if masks_lib.is_static(states) else jnp
  first, second = ((masks_lib.PARTIAL, masks_lib.FULL) if partial_first else
                   (masks_lib.FULL, masks_lib.PARTIAL))
  key = xp.where(states == first, 0, xp.where(states == second, 1, 2))
  if xp is np:
    order = np.argsort(key, axis=-1, kind="stable")
  else:
    order = jnp.argsort(key, axis=-1, stable=True)
  n_first = (states == first).sum(-1)
  n_tot = (states != masks_lib.EMPTY).sum(-1)
  last = xp.take_along_axis(order, xp.maximum(n_tot - 1, 0)[..., None], axis=-1)
  pos = xp.arange(states.shape[-1])
  table = xp.where(pos < n_tot[..., None], order, last)
  table = xp.where(n_tot[..., None] == 0, 0, table)
  steps = max(int(n_tot.max()), 1) if xp is np else states.shape[-1]
  table = table[..., :steps]
  return (table.astype(xp.int32), n_first.astype(xp.int32), n_tot.astype(xp.int32), steps)


def _is_contiguous(table, n_tot) -> bool:
  """Every row's non-empty part is ``start, start + 1, ...`` (numpy tables only)."""
  steps = table.shape[-1]
  pos = np.arange(steps)
  expect = table[..., :1] + pos
  return bool(np.all((pos >= n_tot[..., None]) | (table == expect)))


def table_layout(states):
  """Tables for one kernel, ordered so that rows are contiguous runs when possible.

  Returns ``(flat (table, n_first, n_tot), steps, batched, partial_first, contiguous)``.
  Causal masks give contiguous rows with FULL tiles first for q-block rows (keys 0..i) and
  with the PARTIAL (diagonal) tile first for k-block rows (queries j..end).
  """
  batched = int(states.shape[0]) > 1
  choice = (build_table(states, False), False, False)
  if masks_lib.is_static(states):
    for partial_first in (False, True):
      built = build_table(states, partial_first)
      if _is_contiguous(built[0], built[2]):
        choice = (built, partial_first, True)
        break
  (table, n_first, n_tot, steps), partial_first, contiguous = choice
  flat = tuple(jnp.asarray(x).reshape(-1) for x in (table, n_first, n_tot))
  return flat, steps, batched, partial_first, contiguous
