"""``InLineAttention``: injective linear attention (``attnlab.core.mechanisms.inline``) with a
local residual over the last ``local_window`` values whose weights ``r = x W_r`` are predicted
per token and head. Decode state: two linear-attention states and the last ``W - 1`` values."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.inline import inline_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention
from attnlab.nn.mechanisms._mixer_base import check_value, make_param, zeros


@register_attention_module("inline")
class InLineAttention(LinearAttention):
  """InLine over ``x [B, T, E]``; ``local_window`` (W, default 3; 0 = no local residual);
  ``**kwargs``: ``LinearAttention``'s arguments."""

  def __init__(self, d_model: int, num_heads: int, *, local_window: int = 3, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.local_window = check_value(local_window, "local_window", "int>=0", self.mechanism)
    self.wr = (make_param(rngs, zeros, (d_model, self.num_heads, local_window),
                          ("embed", "heads", None), self.param_dtype)
               if local_window else nnx.data(None))

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    h, d, w = self.num_heads, self.head_dim, max(self.local_window, 1)
    return {"s": state_shape(batch, h, d, d, True), "sums": state_shape(batch, h, 1, d, True),
            "v_tail": (batch, w - 1, h, d)}

  def core(self, x, q, k, v, *, state) -> Any:
    r = (jnp.einsum("bte,ehw->bthw", x, self.kernel(self.wr)) if self.local_window
         else None)
    if state is None:
      return inline_attention(q, k, v, local_weights=r, causal=self.causal, form=self.form,
                              chunk_size=self.chunk_size), None
    tail = state["v_tail"] if self.local_window else None
    out, (s, sums, tail) = inline_attention(
        q, k, v, local_weights=r, form="recurrent", return_state=True,
        initial_state=(state["s"], state["sums"], tail))
    return out, {"s": s, "sums": sums,
                 "v_tail": state["v_tail"] if tail is None else tail}
