"""Random-feature attention module (arXiv 2307.11353): frozen random query-key matrices,
trainable values, ending in ``attnlab.core.mechanisms.random_qk_attention``.

Scores ``x_i^T W_h x_j / sqrt(E)`` with ``W_h = qk_mean * I + G_h``, ``G_h`` entries
``N(0, 1/E)``, drawn once at init. ``W`` is stored as ``FrozenRandom`` (an ``nnx.Variable`` that
is **not** an ``nnx.Param``): optimizers built over ``nnx.Param`` (``attnlab.train`` splits the
model with ``nnx.split(model, nnx.Param, nnx.RngState, ...)`` and differentiates and updates
only the ``Param`` part; the rest rides along as ``model_state``) never update it, and the
core function also stops its gradient. The values ``W_v`` and output projection are trained;
there are no query/key projections. Keys are the (normalised) inputs ``x`` themselves, cached
as one ``[B, S, 1, E]`` head. Departures: see the core function. Shapes: x ``[B, T, E]`` ->
``[B, T, E]``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.mechanisms import _scores as core_common
from attnlab.nn.common import FrozenRandom, check_positive_int, resolve_dtype
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, check_kwarg

Array = jax.Array


@register_attention_module("random_qk")
class RandomQKAttention(ScoresAttention):
  """Frozen random query-key attention over ``x [B, T, E]``; see the module docstring.

  Args: ``qk_mean`` (mu, the mean of the frozen ``W_h`` is ``mu * I``); ``**kwargs``:
  ``MultiHeadAttention``'s arguments.
  """

  def __init__(self, d_model: int, num_heads: int, *, qk_mean: float = 0.0, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    check_kwarg(qk_mean, "qk_mean", "float", "random_qk")
    if self.position == "rope" and d_model % 2:
      raise ValueError(f"random_qk with position='rope' needs an even d_model, got {d_model}")
    e, h = d_model, self.num_heads
    mean = float(qk_mean)
    g = jax.random.normal(rngs.params(), (h, e, e), jnp.float32) / math.sqrt(e)
    self.qk_matrix = FrozenRandom(g + mean * jnp.eye(e, dtype=jnp.float32)[None])
    self.q = nnx.data(None)  # no query / key projections
    self.k = nnx.data(None)

  def project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    """q: ``x`` per head ``[B, T, H, E]``; k: ``x`` as one head ``[B, T, 1, E]``; v trained."""
    b, t, e = x.shape
    q = jnp.broadcast_to(x[:, :, None, :], (b, t, self.num_heads, e))
    return q, x[:, :, None, :], self.v(x)

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    """Key cache ``[batch, max_len, 1, E]`` (the inputs), value cache
    ``[batch, max_len, kv_heads, head_dim]``."""
    check_positive_int(batch, "batch")
    check_positive_int(max_len, "max_len")
    dtype = self.dtype if dtype is None else resolve_dtype(dtype)
    self.cached_key = nnx.Cache(jnp.zeros((batch, max_len, 1, self.d_model), dtype))
    self.cached_value = nnx.Cache(jnp.zeros((batch, max_len, self.num_kv_heads,
                                             self.head_dim), dtype))
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    k = core_common.repeat_kv(k, self.num_kv_heads)
    w = jax.lax.stop_gradient(self.qk_matrix[...])
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights, qk_matrix=w)
