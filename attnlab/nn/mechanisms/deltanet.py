"""``DeltaNetAttention``: the delta rule (``attnlab.core.mechanisms.deltanet``) with
``beta = sigmoid(x W_beta)`` and a per-head RMSNorm on the output. Causal only."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attnlab.core.linear import state_shape
from attnlab.core.mechanisms.deltanet import delta_attention
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import LinearAttention, rms_norm_heads
from attnlab.nn.mechanisms._mixer_base import lecun, make_param, ones


@register_attention_module("deltanet")
class DeltaNetAttention(LinearAttention):
  """DeltaNet over ``x [B, T, E]``; ``**kwargs``: ``LinearAttention``'s arguments
  (``causal`` must be True)."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    if not self.causal:
      raise ValueError(f"{self.mechanism}: the delta rule is causal; got causal=False")
    h, d, pd = self.num_heads, self.head_dim, self.param_dtype
    self.wb = make_param(rngs, lecun, (d_model, h), ("embed", "heads"), pd)
    self.norm_scale = make_param(rngs, ones, (h, d), ("heads", "head_dim"), pd)

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"s": state_shape(batch, self.num_heads, self.head_dim, self.head_dim)}

  def gates(self, x) -> dict[str, Any]:
    return {"beta": jax.nn.sigmoid(x @ self.kernel(self.wb))}

  def run(self, q, k, v, gates, **kw):
    return delta_attention(q, k, v, **gates, **kw)

  def core(self, x, q, k, v, *, state) -> Any:
    gates = self.gates(x)
    if state is None:
      out = self.run(q, k, v, gates, form=self.form, chunk_size=self.chunk_size)
      new = None
    else:
      out, s = self.run(q, k, v, gates, form="recurrent", initial_state=state["s"],
                        return_state=True)
      new = {"s": s}
    return self.finish(x, rms_norm_heads(out, self.norm_scale[...])), new

  def finish(self, x, out):
    return out
