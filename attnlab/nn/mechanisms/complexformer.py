"""ComplexFormer CMHA module (arXiv 2505.10222), ending in
``attnlab.core.mechanisms.complex_attention``.

Per head h: ``phase_scale`` a_h (init 1), ``phase_bias`` b_h (init 0) and ``pos_scale`` s_h
(init 1) of the adaptive differential rotation
``cos(a_h (theta_q - theta_k) + b_h + s_h (m - n) omega_c)`` on the polar form of q/k
(``omega_c = rope_base^(-2c/D)``, ``rope_base`` from ``model.rope_base``). At init this is
exactly RoPE attention. The module applies its own relative phase, so ``model.position`` must
not be "rope" (use "none"). Departures: ``Adapt`` is a per-head affine map (the paper does not
fix its form); positions are the token index (``q_offset + i``). Shapes: x ``[B, T, E]`` ->
``[B, T, E]``; head_dim must be even.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, constant_init, make_param

Array = jax.Array


@register_attention_module('complexformer')
class ComplexFormerAttention(ScoresAttention):
  """See the module docstring; ``**kwargs``: ``MultiHeadAttention``'s arguments."""


  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    if self.position == "rope":
      raise ValueError("complexformer applies its own rotary phase: position must not be "
                       "'rope'")
    if self.head_dim % 2:
      raise ValueError(f"complexformer needs an even head_dim, got {self.head_dim}")
    h, pd = self.num_heads, self.param_dtype
    self.phase_scale = make_param(rngs, constant_init(1.0), (h,), ("heads",), pd)
    self.phase_bias = make_param(rngs, constant_init(0.0), (h,), ("heads",), pd)
    self.pos_scale = make_param(rngs, constant_init(1.0), (h,), ("heads",), pd)

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    extra = dict(phase_scale=self.phase_scale[...], phase_bias=self.phase_bias[...],
                 pos_scale=self.pos_scale[...])
    if "rope_base" not in dict(self.core_kwargs):
      extra["rope_base"] = self.rope_base
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights, **extra)
