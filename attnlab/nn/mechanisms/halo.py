"""HaloNet blocked local attention module (arXiv 2103.12731), ending in
``attnlab.core.mechanisms.halo`` (``halo_attention`` / ``halo_reference``).

Parameters: one relative-logit table per grid axis, ``[2 (block_size + halo) - 1, H, D]``
(normal 0.02), when ``relative``. The token grid is ``grid_shape`` (row-major over the
sequence; one entry may be ``-1``; None: 1D). Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, check_kwarg, make_param


@register_attention_module("halo")
class HaloAttention(ScoresAttention):
  """HaloNet attention over ``x [B, T, E]``.

  Args: ``block_size`` (query block side), ``halo`` (window margin), ``grid_shape`` (tuple of
  ints or None), ``relative`` (learned relative logits); ``**kwargs``: MultiHeadAttention's.
  """

  def __init__(self, d_model: int, num_heads: int, *, block_size: int = 4, halo: int = 1,
               grid_shape: tuple[int, ...] | None = None, relative: bool = True,
               rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.block_size = check_kwarg(block_size, "block_size", "int>0", "halo")
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
      raise ValueError(f"halo: halo must be a non-negative int, got {halo!r}")
    if grid_shape is not None and (not isinstance(grid_shape, (tuple, list)) or not grid_shape):
      raise ValueError(f"halo: grid_shape must be a non-empty tuple of ints or None, got "
                       f"{grid_shape!r}")
    self.halo = halo
    self.grid_shape = None if grid_shape is None else tuple(int(s) for s in grid_shape)
    self.relative = check_kwarg(relative, "relative", "bool", "halo")
    axes = 1 if grid_shape is None else len(grid_shape)
    shape = (2 * (block_size + halo) - 1, self.num_heads, self.head_dim)
    self.rel = nnx.List([make_param(rngs, nnx.initializers.normal(0.02), shape,
                                    (None, "heads", "head_dim"), self.param_dtype)
                         for _ in range(axes if relative else 0)])

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    tables = tuple(t[...].astype(self.dtype) for t in self.rel) or None
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights,
                          grid_shape=self.grid_shape, block_size=self.block_size,
                          halo=self.halo, rel_tables=tables)
