"""VMoBA module (arXiv 2506.23858): ``attnlab.core.mechanisms.vmoba`` with the block partition
cycled by layer (``partition=None``: "1d", "2d", "3d" for ``layer_index % 3`` = 0, 1, 2). No
parameters beyond MultiHeadAttention's projections. Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.core.mechanisms.vmoba import PARTITIONS
from attnlab.nn.attention import MultiHeadAttention, register_attention_module


@register_attention_module("vmoba")
class VMoBAAttention(MultiHeadAttention):
  """VMoBA over ``x [B, T, E]``. Args: ``grid_shape`` (frames, height, width; one may be -1),
  ``block_shape`` (bt, bh, bw), ``partition`` (None: cycled by layer), ``top_k``,
  ``threshold`` (None or in (0, 1]), ``global_selection``; ``**kwargs``: MultiHeadAttention's.
  """

  def __init__(self, d_model: int, num_heads: int, *,
               grid_shape: tuple[int, ...] = (-1, 4, 4),
               block_shape: tuple[int, ...] = (1, 2, 2), partition: str | None = None,
               top_k: int = 3, threshold: float | None = None, global_selection: bool = True,
               layer_index: int = 0, rngs: nnx.Rngs, **kwargs: Any):
    if partition is None:
      partition = PARTITIONS[layer_index % len(PARTITIONS)]
    if partition not in PARTITIONS:
      raise ValueError(f"vmoba: partition must be None or one of {PARTITIONS}, got "
                       f"{partition!r}")
    if not isinstance(global_selection, bool):
      raise ValueError(f"vmoba: global_selection must be a bool, got {global_selection!r}")
    kw = dict(kwargs.pop("mechanism_kwargs", None) or {})
    kw.update(grid_shape=tuple(grid_shape), block_shape=tuple(block_shape),
              partition=partition, top_k=top_k, threshold=threshold,
              global_selection=global_selection)
    super().__init__(d_model, num_heads, rngs=rngs, mechanism_kwargs=kw, **kwargs)
    self.partition, self.layer_index = partition, layer_index
