"""Deconstructing Attention "RndEmbQK" (``FixedQKMixer``): fixed, input-independent mixing.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602), Eq. 9-10 (see ``attnlab.core.mechanisms.mixer_fixed``). Q and K
come from a fixed random embedding ``eps [max_len, E]`` of the *positions*
(``eps ~ N(0, embedding_std^2 I)``), projected by trained ``W_Q, W_K``; V from the hidden
state. The attention matrix is the same for every input (a fixed causal mixing matrix, trained
through ``W_Q, W_K``). ``embedding``: "random" (frozen, as the paper) | "learned" (``eps``
trained). Departure: the paper passes ``eps`` through the Transformer blocks below layer ``l``;
here it is projected directly (a module cannot run the stack). RoPE is applied to these Q, K
when the model uses RoPE (still input-independent). Ends in softmax attention.
Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import attnlab
from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._mixer_base import (FrozenRandom, TokenMixer, check_value,
                                               make_param, normal_init)

Array = jax.Array


@register_attention_module("mixer_fixed")
class FixedQKMixer(TokenMixer):
  """Softmax attention with Q, K from a fixed positional embedding (input-independent).

  Args: ``embedding`` ("random": frozen | "learned"), ``embedding_std``; ``position`` /
  ``rope_base`` (RoPE on the fixed Q, K when "rope"); ``implementation`` of the softmax
  attention; ``**kwargs``: ``TokenMixer``'s arguments.
  """

  def __init__(self, d_model: int, num_heads: int, *, embedding: str = "random",
               embedding_std: float = 1.0, position: str = "none", rope_base: float = 10000.0,
               implementation: str = "auto", rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.embedding_kind = check_value(embedding, "embedding", ("random", "learned"),
                                      self.mechanism)
    check_value(embedding_std, "embedding_std", "float>0", self.mechanism)
    e, h, kh, d = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim
    self.position = positions_lib.check_position_kind(position)
    self.rope_base = float(rope_base)
    self.implementation = implementation
    if self.position == "rope" and d % 2:
      raise ValueError(f"position='rope' needs an even head_dim, got {d}")
    init = normal_init(float(embedding_std))
    if embedding == "learned":
      self.embedding = make_param(rngs, init, (self.max_len, e), ("position", "embed"))
    else:
      self.embedding = FrozenRandom(init(rngs.params(), (self.max_len, e), jnp.float32))
    fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                               in_axis=0, out_axis=(1, 2))
    self.w_q = make_param(rngs, fan_in, (e, h, d), ("embed", "heads", "head_dim"))
    self.w_k = make_param(rngs, fan_in, (e, kh, d), ("embed", "kv_heads", "head_dim"))
    self.w_v = make_param(rngs, fan_in, (e, kh, d), ("embed", "kv_heads", "head_dim"))
    fan_in_o = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                 in_axis=(0, 1), out_axis=2)
    self.w_o = make_param(rngs, fan_in_o, (h, d, e), ("heads", "head_dim", "embed"))

  def fixed_qk(self, positions: Array) -> tuple[Array, Array]:
    """q ``[B|1, T, H, D]`` and k ``[B|1, T, K, D]`` of ``positions [B|1, T]`` (no input)."""
    table = self.embedding[...]
    if self.embedding_kind == "random":
      table = jax.lax.stop_gradient(table)
    eps = table[jnp.clip(positions, 0, self.max_len - 1)].astype(self.dtype)
    q = jnp.einsum("bte,ehd->bthd", eps, self.w_q[...].astype(self.dtype))
    k = jnp.einsum("bte,ehd->bthd", eps, self.w_k[...].astype(self.dtype))
    if self.position == "rope":
      q = positions_lib.apply_rope(q, positions, base=self.rope_base)
      k = positions_lib.apply_rope(k, positions, base=self.rope_base)
    return q, k

  def mix(self, x, *, positions, mask, head_mask, bias, return_weights):
    b = x.shape[0]
    q, k = self.fixed_qk(positions)
    q = jnp.broadcast_to(q, (b,) + q.shape[1:])
    k = jnp.broadcast_to(k, (b,) + k.shape[1:])
    v = jnp.einsum("bte,ehd->bthd", x.astype(self.dtype), self.w_v[...].astype(self.dtype))
    out = attnlab.attention(q, k, v, mechanism="softmax", implementation=self.implementation,
                            mask=mask, bias=bias, head_mask=head_mask,
                            return_weights=return_weights)
    weights = None
    if return_weights:
      out, weights = out
    y = jnp.einsum("bthd,hde->bte", out.astype(self.dtype), self.w_o[...].astype(self.dtype))
    return (y, weights) if return_weights else y
