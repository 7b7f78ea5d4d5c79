"""Deconstructing Attention "MLP" (``MixerNone``): a gated MLP replaces attention.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602); the math is ``attnlab.core.mechanisms.mixer_none.gated_mlp``.
No token mixing. ``hidden_dim`` (int >= 0, default 0 = match the attention's parameter count,
``(2 H + 2 K) D E / (3 E)``). No attention weights or heads: ``head_mask``, ``bias`` and
``return_weights`` raise. Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attnlab.core.mechanisms import mixer_none as core
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._mixer_base import (TokenMixer, check_value, lecun, make_param,
                                               no_weights)

Array = jax.Array


def matched_hidden_dim(d_model: int, num_heads: int, num_kv_heads: int, head_dim: int) -> int:
  """Gated-MLP width with the parameter count of the q/k/v/o projections (>= 1)."""
  attn = (2 * num_heads + 2 * num_kv_heads) * head_dim * d_model
  return max(1, round(attn / (3 * d_model)))


@register_attention_module("mixer_none")
class MixerNone(TokenMixer):
  """``O = FC_dn(SiLU(FC_gt(x)) * FC_up(x))`` per token (no token mixing).

  ``hidden_dim``: MLP width (0 = match the attention's parameter count); ``**kwargs``:
  ``TokenMixer``'s arguments.
  """

  mixes_tokens = False

  def __init__(self, d_model: int, num_heads: int, *, hidden_dim: int = 0, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    check_value(hidden_dim, "hidden_dim", "int>=0", self.mechanism)
    e = self.d_model
    m = hidden_dim or matched_hidden_dim(e, self.num_heads, self.num_kv_heads,
                                                     self.head_dim)
    self.w_gate = make_param(rngs, lecun, (e, m), ("embed", "mlp"))
    self.w_up = make_param(rngs, lecun, (e, m), ("embed", "mlp"))
    self.w_down = make_param(rngs, lecun, (m, e), ("mlp", "embed"))

  def mix(self, x, *, positions, mask, head_mask, bias, return_weights):
    del positions, mask
    no_weights(self.mechanism, head_mask, bias, return_weights)
    return core.gated_mlp(x, self.w_gate[...], self.w_up[...],
                          self.w_down[...]).astype(self.dtype)
