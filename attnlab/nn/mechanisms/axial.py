"""Axial attention module (arXiv 1912.12180): ``attnlab.core.mechanisms.axial`` along one grid
axis per layer. No parameters of its own beyond MultiHeadAttention's projections.

``grid_shape``: the token grid (row-major over the sequence; one entry may be ``-1``);
``axis``: the grid axis this layer attends along, or None to cycle
``axis = layer_index % len(grid_shape)`` (row, column, ... in successive layers).
Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.nn.attention import MultiHeadAttention, register_attention_module


@register_attention_module("axial")
class AxialAttention(MultiHeadAttention):
  """Axial attention over ``x [B, T, E]``; ``**kwargs``: MultiHeadAttention's arguments."""

  def __init__(self, d_model: int, num_heads: int, *, grid_shape: tuple[int, ...] = (-1, 8),
               axis: int | None = None, layer_index: int = 0, rngs: nnx.Rngs, **kwargs: Any):
    if (not isinstance(grid_shape, (tuple, list)) or not grid_shape
        or any(isinstance(s, bool) or not isinstance(s, int) for s in grid_shape)):
      raise ValueError(f"axial: grid_shape must be a non-empty tuple of ints, got "
                       f"{grid_shape!r}")
    grid_shape = tuple(grid_shape)
    if axis is None:
      axis = layer_index % len(grid_shape)
    if isinstance(axis, bool) or not isinstance(axis, int) or not (
        -len(grid_shape) <= axis < len(grid_shape)):
      raise ValueError(f"axial: axis must be None or an int in [-{len(grid_shape)}, "
                       f"{len(grid_shape)}), got {axis!r}")
    kw = dict(kwargs.pop("mechanism_kwargs", None) or {})
    kw.update(grid_shape=grid_shape, axis=axis)
    super().__init__(d_model, num_heads, rngs=rngs, mechanism_kwargs=kw, **kwargs)
    self.grid_shape, self.axis, self.layer_index = grid_shape, axis, layer_index
