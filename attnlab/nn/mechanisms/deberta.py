"""DeBERTa disentangled-attention module (arXiv 2006.03654), ending in
``attnlab.core.mechanisms.deberta_attention``.

Parameters: the relative position table ``P`` ``[2m, E]`` (normal 0.02) and its projections
``W_qr``, ``W_kr`` ``[E, H, D]``; ``q_r = P W_qr``, ``k_r = P W_kr`` per head. Scores
``(q.k + q.k_r[d(i,j)] + k.q_r[d(j,i)]) / sqrt(3D)`` with ``d`` the clipped relative distance
(``m = max_distance``; ``log_buckets`` for DeBERTa-v2 buckets up to ``max_position``).
Departures: one table per layer (DeBERTa shares ``P`` across layers); no LayerNorm on ``P``;
decoder use relies on the causal mask over the summed scores; positions are the token index
(``q_offset + i``), not the ``positions`` argument. Use ``model.position = "none"`` for the
paper's setting (any other kind is added on top). Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, check_kwarg, make_param

Array = jax.Array


@register_attention_module("deberta")
class DebertaAttention(ScoresAttention):
  """DeBERTa attention over ``x [B, T, E]``; see the module docstring.

  Args: ``max_distance`` (m, the relative-distance clip), ``log_buckets`` (DeBERTa-v2 log
  buckets), ``max_position`` (their range); ``**kwargs``: ``MultiHeadAttention``'s arguments.
  """

  def __init__(self, d_model: int, num_heads: int, *, max_distance: int = 16,
               log_buckets: bool = False, max_position: int = 512, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.max_distance = check_kwarg(max_distance, "max_distance", "int>0", "deberta")
    self.log_buckets = check_kwarg(log_buckets, "log_buckets", "bool", "deberta")
    self.max_position = check_kwarg(max_position, "max_position", "int>0", "deberta")
    if self.log_buckets and self.max_distance < 2:
      raise ValueError("deberta: log_buckets needs max_distance >= 2")
    e, h, d, pd = self.d_model, self.num_heads, self.head_dim, self.param_dtype
    proj = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                             out_axis=(1, 2))
    self.rel_table = make_param(rngs, nnx.initializers.normal(0.02), (2 * self.max_distance, e),
                                (None, "embed"), pd)
    self.q_rel = make_param(rngs, proj, (e, h, d), ("embed", "heads", "head_dim"), pd)
    self.k_rel = make_param(rngs, proj, (e, h, d), ("embed", "heads", "head_dim"), pd)

  def relative_embeddings(self) -> tuple[Array, Array]:
    """``(q_r, k_r)``, each ``[2m, H, D]`` in the compute dtype."""
    p = self.rel_table[...].astype(self.dtype)
    q_r = jnp.einsum("re,ehd->rhd", p, self.q_rel[...].astype(self.dtype))
    k_r = jnp.einsum("re,ehd->rhd", p, self.k_rel[...].astype(self.dtype))
    return q_r, k_r

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    q_r, k_r = self.relative_embeddings()
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights, q_r=q_r, k_r=k_r,
                          max_distance=self.max_distance, log_buckets=self.log_buckets,
                          max_position=self.max_position)
