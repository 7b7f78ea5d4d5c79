"""``SlabLinearAttention``: SLAB's simplified linear attention
(``attnlab.core.mechanisms.slab_linear``) with a learned depthwise convolution on V of width
``conv_width``; decode state: the linear-attention state and the last ``W - 1`` values."""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.slab_linear import slab_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention
from attnlab.nn.mechanisms._mixer_base import check_value, make_param, normal_init


@register_attention_module("slab_linear")
class SlabLinearAttention(LinearAttention):
  """SLAB attention over ``x [B, T, E]``; ``conv_width`` (W, default 4); ``**kwargs``:
  ``LinearAttention``'s arguments."""

  def __init__(self, d_model: int, num_heads: int, *, conv_width: int = 4, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.conv_width = check_value(conv_width, "conv_width", "int>0", self.mechanism)
    self.conv = make_param(rngs, normal_init(conv_width ** -0.5),
                           (conv_width, self.num_heads, self.head_dim),
                           (None, "heads", "head_dim"), self.param_dtype)

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    h, d = self.num_heads, self.head_dim
    return {"s": state_shape(batch, h, d, d, True),
            "v_tail": (batch, self.conv_width - 1, h, d)}

  def core(self, x, q, k, v, *, state) -> Any:
    kernel = self.conv[...]
    if state is None:
      return slab_attention(q, k, v, conv_kernel=kernel, causal=self.causal, form=self.form,
                            chunk_size=self.chunk_size), None
    out, (s, tail) = slab_attention(q, k, v, conv_kernel=kernel, form="recurrent",
                                    initial_state=(state["s"], state["v_tail"]),
                                    return_state=True)
    return out, {"s": s, "v_tail": tail}
