"""Selective Self-Attention module (arXiv 2411.12892): learned query / position / value
temperatures feeding ``attnlab.core.mechanisms.selective_attention``.

Temperatures (per head; weight sharing: computed from the head's own q / v, so they add only
``H D + K D + H`` parameters)::

    tau_q[i, h] = 1 + tanh(q_ih . w_h)            query_temperature (w zero-init)
                + exp(-exp(beta_h)) * log(n_i)    position_temperature (beta init 1.5)
    tau_v[j, g] = 1 + tanh(v_jg . u_g)            value_temperature (u zero-init)

``n_i`` = keys visible to query i (``i + 1`` causal). The position term follows the authors'
code (``1 + exp(-exp(beta)) log(n)``, one beta per head here); the token term's form
(``tanh`` of a linear read-out of q / v) is our choice, as is including the 1 so that all flags
off (or zero-init) is softmax attention. Kwargs (booleans): ``query_temperature``,
``position_temperature``, ``value_temperature``. Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import (ScoresAttention, check_kwarg, constant_init,
                                               make_param)

Array = jax.Array


@register_attention_module("selective_ssa")
class SelectiveAttention(ScoresAttention):
  """Selective self-attention over ``x [B, T, E]``; see the module docstring.

  Args: the three temperature flags (each adds its learned temperature); ``**kwargs``:
  ``MultiHeadAttention``'s arguments.
  """
  def __init__(self, d_model: int, num_heads: int, *, query_temperature: bool = True,
               position_temperature: bool = True, value_temperature: bool = True,
               rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    h, kh, d = self.num_heads, self.num_kv_heads, self.head_dim
    self.use_q = check_kwarg(query_temperature, "query_temperature", "bool", "selective_ssa")
    self.use_pos = check_kwarg(position_temperature, "position_temperature", "bool",
                               "selective_ssa")
    self.use_v = check_kwarg(value_temperature, "value_temperature", "bool", "selective_ssa")
    pd = self.param_dtype
    zeros = nnx.initializers.zeros_init()
    self.q_temp = (make_param(rngs, zeros, (h, d), ("heads", "head_dim"), pd)
                   if self.use_q else nnx.data(None))
    self.pos_temp = (make_param(rngs, constant_init(1.5), (h,), ("heads",), pd)
                     if self.use_pos else nnx.data(None))
    self.v_temp = (make_param(rngs, zeros, (kh, d), ("kv_heads", "head_dim"), pd)
                   if self.use_v else nnx.data(None))

  def temperatures(self, q: Array, v: Array) -> dict[str, Array]:
    """The pure function's temperature inputs for q ``[B,T,H,D]`` and v ``[B,S,K,D]``."""
    out = {}
    if self.use_q:
      w = self.q_temp[...].astype(jnp.float32)
      out["q_temperature"] = 1.0 + jnp.tanh(jnp.einsum("bthd,hd->bth", q.astype(jnp.float32),
                                                       w))
    if self.use_pos:
      out["position_strength"] = jnp.exp(-jnp.exp(self.pos_temp[...].astype(jnp.float32)))
    if self.use_v:
      u = self.v_temp[...].astype(jnp.float32)
      out["v_temperature"] = 1.0 + jnp.tanh(jnp.einsum("bskd,kd->bsk", v.astype(jnp.float32),
                                                       u))
    return out

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights,
                          **self.temperatures(q, v))
