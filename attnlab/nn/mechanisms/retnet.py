"""``RetNetAttention``: multi-scale retention (``attnlab.core.mechanisms.retnet``) with the
paper's per-head GroupNorm (RMS) and swish output gate ``swish(x W_g) * norm(o)``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.retnet import retention, retnet_log_decays
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import _IN_INIT, LinearAttention, rms_norm_heads
from attnlab.nn.mechanisms._mixer_base import make_param, ones


@register_attention_module("retnet")
class RetNetAttention(LinearAttention):
  """Retention over ``x [B, T, E]``; ``**kwargs``: ``LinearAttention``'s arguments."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    h, d = self.num_heads, self.head_dim
    self.wg = make_param(rngs, _IN_INIT, (d_model, h, d), ("embed", "heads", "head_dim"),
                         self.param_dtype)
    self.norm_scale = make_param(rngs, ones, (h, d), ("heads", "head_dim"), self.param_dtype)
    self.log_decay = nnx.data(retnet_log_decays(h))

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"s": state_shape(batch, self.num_heads, self.head_dim, self.head_dim)}

  def core(self, x, q, k, v, *, state) -> Any:
    decay = jnp.asarray(self.log_decay)
    if state is None:
      out, new = retention(q, k, v, log_decay=decay, causal=self.causal, form=self.form,
                           chunk_size=self.chunk_size), None
    else:
      out, s = retention(q, k, v, log_decay=decay, form="recurrent", initial_state=state["s"],
                         return_state=True)
      new = {"s": s}
    gate = jax.nn.silu(jnp.einsum("bte,ehd->bthd", x, self.kernel(self.wg)).astype(jnp.float32))
    return gate * rms_norm_heads(out, self.norm_scale[...]), new
