"""``GLAAttention``: gated linear attention (``attnlab.core.mechanisms.gla``) with the paper's
low-rank gate ``alpha = sigmoid(x W1 W2 + b)^(1/16)`` (rank ``gate_rank``), per-head RMSNorm and
swish output gate."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.gla import gated_linear_attention, gla_log_decay
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import _IN_INIT, LinearAttention, rms_norm_heads
from attnlab.nn.mechanisms._mixer_base import (check_value, lecun, make_param, ones,
                                               zeros)


@register_attention_module("gla")
class GLAAttention(LinearAttention):
  """GLA over ``x [B, T, E]``.

  Args: ``gate_rank`` (low-rank gate width, paper: 16), ``tau`` (gate temperature, paper: 16);
  ``**kwargs``: ``LinearAttention``'s arguments (``chunk_size`` default 16 here: the
  intra-chunk decay tensor is ``[C, C, D]``).
  """

  def __init__(self, d_model: int, num_heads: int, *, gate_rank: int = 16, tau: float = 16.0,
               chunk_size: int = 16, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, chunk_size=chunk_size, rngs=rngs, **kwargs)
    self.gate_rank = check_value(gate_rank, "gate_rank", "int>0", self.mechanism)
    self.tau = float(check_value(tau, "tau", "float>0", self.mechanism))
    h, d, pd = self.num_heads, self.head_dim, self.param_dtype
    self.wa1 = make_param(rngs, lecun, (d_model, gate_rank), ("embed", None), pd)
    self.wa2 = make_param(rngs, lecun, (gate_rank, h * d), (None, "heads"), pd)
    self.ba = make_param(rngs, zeros, (h * d,), ("heads",), pd)
    self.wg = make_param(rngs, _IN_INIT, (d_model, h, d), ("embed", "heads", "head_dim"), pd)
    self.norm_scale = make_param(rngs, ones, (h, d), ("heads", "head_dim"), pd)

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"s": state_shape(batch, self.num_heads, self.head_dim, self.head_dim)}

  def log_decay(self, x):
    logits = x @ self.kernel(self.wa1) @ self.kernel(self.wa2) + self.kernel(self.ba)
    return gla_log_decay(logits.reshape(x.shape[:2] + (self.num_heads, self.head_dim)),
                         self.tau)

  def core(self, x, q, k, v, *, state) -> Any:
    g = self.log_decay(x)
    if state is None:
      out, new = gated_linear_attention(q, k, v, log_decay=g, causal=self.causal,
                                        form=self.form, chunk_size=self.chunk_size), None
    else:
      out, s = gated_linear_attention(q, k, v, log_decay=g, form="recurrent",
                                      initial_state=state["s"], return_state=True)
      new = {"s": s}
    gate = jax.nn.silu(jnp.einsum("bte,ehd->bthd", x, self.kernel(self.wg)).astype(jnp.float32))
    return gate * rms_norm_heads(out, self.norm_scale[...]), new
