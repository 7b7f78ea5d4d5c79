"""Axial attention: attention along one axis of a token grid at a time.

Paper: "Axial Attention in Multidimensional Transformers" (Ho, Kalchbrenner, Weissenborn,
Salimans; arXiv 1912.12180). The sequence is a row-major grid (``grid_shape``, 2D or 3D; one
entry may be ``-1``); a query attends to the keys on its line along grid axis ``axis`` (all
other coordinates equal): O(T * L) work for lines of length ``L`` instead of O(T^2). A model
alternates the axis across layers (the NNX module cycles ``axis = layer_index % ndim`` when
no axis is given), so that two (three) layers connect every pair of cells.

Causal variants: the call's mask applies on top of the line, so a causal (raster-order) mask
gives the paper's masked row attention (``axis=-1``: earlier cells of the row) and masked
column attention (``axis=0``: cells above in the column).

Implementations: ``"chunked"`` (``axial_attention``) gathers the lines, O(T L d) work and
O(T L) memory; ``"xla"`` (``axial_reference``) is the same attention as a dense line mask
(also for KV-cache decoding with ``q_offset``). Departure: the Axial Transformer's full
architecture (row/column stacks, shifted inner decoder) is a model, not this mechanism; here
one attention call is one axis.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import registry
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import _scores

Array = jax.Array


def _check(grid_shape: Any, tk: int, axis: Any) -> tuple[tuple[int, ...], int]:
  grid = _grid.check_grid(grid_shape, tk)
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not (
      -len(grid) <= axis < len(grid)):
    raise ValueError(f"axis must be an int in [-{len(grid)}, {len(grid)}) for grid {grid}, got "
                     f"{axis!r}")
  return grid, int(axis) % len(grid)


def line_layout(grid: tuple[int, ...], axis: int) -> np.ndarray:
  """Flat indices ``[T / L, L]`` of the lines along ``axis``."""
  idx = np.arange(int(np.prod(grid))).reshape(grid)
  return np.moveaxis(idx, axis, -1).reshape(-1, grid[axis])


def axial_reference(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                    scale: float | None = None, softcap: float | None = None,
                    alibi_slopes: Array | None = None, q_offset: Any = 0,
                    head_mask: Array | None = None, return_weights: bool = False,
                    grid_shape: Sequence[int] | None = None, axis: int = -1):
  """Axial attention as a dense line mask ("xla"); keys are the grid, query ``i`` is cell
  ``q_offset + i``."""
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  tq, tk = q.shape[1], k.shape[1]
  grid, axis = _check(grid_shape, tk, axis)
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  qc, kc = _grid.grid_coords(q_pos, grid, jnp), _grid.grid_coords(k_pos, grid, jnp)
  same = qc[:, None, :] == kc[None, :, :]
  line = jnp.all(jnp.where(jnp.arange(len(grid)) == axis, True, same), axis=-1)
  allowed = line[None, None]
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights,
                                allowed=allowed)


def axial_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                    scale: float | None = None, softcap: float | None = None,
                    alibi_slopes: Array | None = None, q_offset: Any = 0,
                    head_mask: Array | None = None, return_weights: bool = False,
                    grid_shape: Sequence[int] | None = None, axis: int = -1):
  """Axial attention over gathered lines ("chunked"); a full pass (``Tq == Tk``,
  ``q_offset == 0``). Shapes as ``axial_reference``."""
  reason = _grid.full_pass_refusal(q=q, k=k, bias=bias, alibi_slopes=alibi_slopes,
                                   q_offset=q_offset)
  if reason:
    raise ValueError(f"axial_attention: {reason}")
  if return_weights:
    return axial_reference(q, k, v, mask=mask, scale=scale, softcap=softcap,
                           head_mask=head_mask, return_weights=True, grid_shape=grid_shape,
                           axis=axis)
  mask, _, scale, _, head_mask = _scores.prepare(q, k, v, mask, None, scale, None, head_mask)
  grid, axis = _check(grid_shape, k.shape[1], axis)
  lines = line_layout(grid, axis)
  out = _grid.gathered_attention(q, k, v, lines, lines, scale=scale, softcap=softcap, mask=mask)
  return common.apply_head_mask(out, head_mask).astype(q.dtype)


def _supports(**call: Any) -> str | None:
  return _grid.refuse(call, axial_attention) or _grid.full_pass_refusal(**call)


registry.register_mechanism(
    "axial", kind="attention",
    paper="Axial Attention in Multidimensional Transformers (arXiv 1912.12180)",
    description="attention along one grid axis (a row, a column, ...); causal masks give the "
                "masked row / column variants; the module cycles the axis by layer",
    complexity="O(T L d) time, O(T L) memory (L = line length)",
    kernel="line gather (chunked)",
    implementations={"xla": axial_reference})
registry.register_implementation("axial", "chunked", axial_attention, supports=_supports)
