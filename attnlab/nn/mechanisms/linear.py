"""``LinearAttention`` module for the elu+1 linear attention
(``attnlab.core.mechanisms.linear``): q/k/v/o projections, decode state ``[B, H, D, D + 1]``."""

from __future__ import annotations

from typing import Any

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.linear import elu_linear_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention


@register_attention_module("linear_elu")
class EluLinearAttention(LinearAttention):
  """Katharopoulos linear attention over ``x [B, T, E]``; ``**kwargs``: ``LinearAttention``'s
  arguments (heads, causal, form, chunk_size, ...)."""

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"s": state_shape(batch, self.num_heads, self.head_dim, self.head_dim, True)}

  def core(self, x, q, k, v, *, state) -> Any:
    if state is None:
      return elu_linear_attention(q, k, v, causal=self.causal, form=self.form,
                                  chunk_size=self.chunk_size), None
    out, s = elu_linear_attention(q, k, v, form="recurrent", initial_state=state["s"],
                                  return_state=True)
    return out, {"s": s}
