"""CRATE multi-head subspace self-attention module (arXiv 2306.01129 / 2404.02446), ending in
``attnlab.core.mechanisms.crate_attention``.

One projection ``U`` ``[E, H, D]`` (the ``q`` kernel) gives ``w = x U``, used as query, key
and value: ``out = W_o [softmax(w_h w_h^T / sqrt(D)) w_h]_h``. There are no separate k/v
projections. Requires ``num_kv_heads == num_heads`` and a position kind other than "rope"
(rotating q and k would break ``q == k``; use "learned" or "none"). Departure: a separate
learned output projection ``W_o`` (as the authors' code) instead of the paper's
``[U_1 ... U_H]``. Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention

Array = jax.Array


@register_attention_module('crate')
class CRATEAttention(ScoresAttention):
  """See the module docstring; ``**kwargs``: ``MultiHeadAttention``'s arguments."""


  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    if self.num_kv_heads != self.num_heads:
      raise ValueError(f"crate needs num_kv_heads == num_heads, got {self.num_kv_heads} and "
                       f"{self.num_heads}")
    if self.position == "rope":
      raise ValueError("crate: position must not be 'rope' (q == k == v)")
    self.k = nnx.data(None)
    self.v = nnx.data(None)

  def project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    """``w = x U`` ``[B, T, H, D]`` returned three times (query, key, value)."""
    w = self.q(x)
    return w, w, w

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights)
