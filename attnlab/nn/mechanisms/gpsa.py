"""ConViT gated positional self-attention module (arXiv 2103.10697), 1-D, ending in
``attnlab.core.mechanisms.gpsa_attention``.

Parameters per head: ``pos_weights`` ``v_pos = (p0, p1)`` on ``(delta^2, delta)``,
``delta = j - i``, and the gate logit ``lambda`` (``sigmoid(lambda)`` = weight of positional
attention). Locality init as the paper's: ``v_pos = alpha (-1, 2 Delta_h)`` with
``alpha = locality_strength`` and head offsets ``Delta_h = -h`` (causal: head h looks h tokens
back) or ``h - H // 2`` (bidirectional); ``lambda = gate_init`` (paper: 1). Departures: 1-D
relative positions instead of 2-D patches; positions are the token index (``q_offset + i``).
The catalogue uses ``model.position = "none"`` (ConViT's absolute patch embedding would be
"learned"). Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.mechanisms.gpsa import locality_pos_weights
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import (ScoresAttention, check_kwarg, constant_init,
                                               make_param)

Array = jax.Array


@register_attention_module("gpsa")
class GPSAttention(ScoresAttention):
  """Gated positional self-attention over ``x [B, T, E]``; see the module docstring.

  Args: ``locality_strength`` (alpha of the locality init), ``gate_init`` (initial gate logit
  lambda); ``**kwargs``: ``MultiHeadAttention``'s arguments.
  """

  def __init__(self, d_model: int, num_heads: int, *, locality_strength: float = 1.0,
               gate_init: float = 1.0, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    check_kwarg(locality_strength, "locality_strength", "float", "gpsa")
    check_kwarg(gate_init, "gate_init", "float", "gpsa")
    h, pd = self.num_heads, self.param_dtype
    offsets = (-jnp.arange(h) if self.causal else jnp.arange(h) - h // 2).astype(jnp.float32)
    init_pos = locality_pos_weights(offsets, locality_strength)
    self.pos_weights = make_param(rngs, constant_init(init_pos), (h, 2), ("heads", None), pd)
    self.gate = make_param(rngs, constant_init(gate_init), (h,),
                           ("heads",), pd)

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights,
                          pos_weights=self.pos_weights[...], gate=self.gate[...])
