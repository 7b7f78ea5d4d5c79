"""``SoftAttention``: SOFT (``attnlab.core.mechanisms.soft``) with one shared q/k projection
and, in a causal model, ``num_landmarks`` learned landmarks per head; decode state
``[B, H, m, D]``."""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.soft import soft_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention
from attnlab.nn.mechanisms._mixer_base import check_value, make_param, normal_init


@register_attention_module("soft_nystrom")
class SoftAttention(LinearAttention):
  """SOFT over ``x [B, T, E]``; ``num_landmarks`` (m), ``newton_iters``; ``**kwargs``:
  ``LinearAttention``'s arguments (``num_kv_heads`` must equal ``num_heads``: Q = K)."""

  shared_qk = True

  def __init__(self, d_model: int, num_heads: int, *, num_landmarks: int = 16,
               newton_iters: int = 20, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.num_landmarks = check_value(num_landmarks, "num_landmarks", "int>0", self.mechanism)
    self.newton_iters = check_value(newton_iters, "newton_iters", "int>0", self.mechanism)
    self.landmarks = (make_param(rngs, normal_init(1.0),
                                 (self.num_heads, num_landmarks, self.head_dim),
                                 ("heads", None, "head_dim"), self.param_dtype)
                      if self.causal else nnx.data(None))

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"s": state_shape(batch, self.num_heads, self.num_landmarks, self.head_dim)}

  def core(self, x, q, k, v, *, state) -> Any:
    kw = dict(landmarks=None if self.landmarks is None else self.landmarks[...],
              num_landmarks=self.num_landmarks, newton_iters=self.newton_iters)
    if state is None:
      return soft_attention(q, v, causal=self.causal, form=self.form,
                            chunk_size=self.chunk_size, **kw), None
    out, s = soft_attention(q, v, form="recurrent", initial_state=state["s"],
                            return_state=True, **kw)
    return out, {"s": s}
