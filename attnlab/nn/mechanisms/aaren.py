"""``AarenAttention``: Aaren (``attnlab.core.mechanisms.aaren``): one learned query per head
attends over the prefix by an associative scan; decode state ``[B, H, D + 2]``."""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.core.mechanisms.aaren import aaren_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention
from attnlab.nn.mechanisms._mixer_base import make_param, normal_init


@register_attention_module("aaren")
class AarenAttention(LinearAttention):
  """Aaren over ``x [B, T, E]``; ``**kwargs``: ``LinearAttention``'s arguments (``form`` and
  ``chunk_size`` are unused: the scan is the only form)."""

  query_projection = False

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.query = make_param(rngs, normal_init(1.0), (self.num_heads, self.head_dim),
                            ("heads", "head_dim"), self.param_dtype)

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"s": (batch, self.num_heads, self.head_dim + 2)}

  def core(self, x, q, k, v, *, state) -> Any:
    if state is None:
      return aaren_attention(self.query[...], k, v, causal=self.causal), None
    out, s = aaren_attention(self.query[...], k, v, initial_state=state["s"],
                             return_state=True)
    return out, {"s": s}
