"""``NaLaFormerAttention``: norm-aware linear attention
(``attnlab.core.mechanisms.nalaformer``); decode state ``[B, H, 2D, D + 1]``."""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.nalaformer import nalaformer_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention
from attnlab.nn.mechanisms._mixer_base import check_value


@register_attention_module("nalaformer")
class NaLaFormerAttention(LinearAttention):
  """NaLaFormer over ``x [B, T, E]``; ``norm_power`` (lambda of the query power law),
  ``key_power``; ``**kwargs``: ``LinearAttention``'s arguments."""

  def __init__(self, d_model: int, num_heads: int, *, norm_power: float = 2.0,
               key_power: float = 2.0, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.norm_power = float(check_value(norm_power, "norm_power", "float>=0", self.mechanism))
    self.key_power = float(check_value(key_power, "key_power", "float>0", self.mechanism))

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    d = self.head_dim
    return {"s": state_shape(batch, self.num_heads, 2 * d, d, True)}

  def core(self, x, q, k, v, *, state) -> Any:
    kw = dict(norm_power=self.norm_power, key_power=self.key_power)
    if state is None:
      return nalaformer_attention(q, k, v, causal=self.causal, form=self.form,
                                  chunk_size=self.chunk_size, **kw), None
    out, s = nalaformer_attention(q, k, v, form="recurrent", initial_state=state["s"],
                                  return_state=True, **kw)
    return out, {"s": s}
