"""NiNformer mixer gating unit as an attention replacement (arXiv 2403.02411).

Holds the parameters of ``attnlab.core.mechanisms.ninformer.ninformer_mixing`` and ends in it:
``u = x W_p + b_p`` gated by an inner MLP-Mixer block (masked token-mixing MLP over positions,
then a channel MLP). Hyperparameters:

* ``token_expansion`` (int > 0, default 1): token-MLP hidden units per position.
* ``channel_mlp_dim`` (int >= 0, default 0 = ``mlp_dim``, the model's MLP width, or
  ``4 * d_model`` when that is not given): channel-MLP width.

Token weights are sized by ``max_len``. Causal models mask them lower-triangular
(see the core function for the departures). No attention weights or heads: ``head_mask``,
``bias`` and ``return_weights`` raise.
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx

from attnlab.core.mechanisms import ninformer as core
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._mixer_base import (TokenMixer, check_value, lecun, make_param,
                                               no_weights, normal_init, ones, zeros)


@register_attention_module("ninformer")
class NiNformerMixer(TokenMixer):
  """NiNformer gating unit over ``x [B, T, E]``; ``**kwargs``: ``TokenMixer``'s arguments."""

  def __init__(self, d_model: int, num_heads: int, *, token_expansion: int = 1,
               channel_mlp_dim: int = 0, mlp_dim: int | None = None, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    check_value(token_expansion, "token_expansion", "int>0", self.mechanism)
    check_value(channel_mlp_dim, "channel_mlp_dim", "int>=0", self.mechanism)
    e, t, r = self.d_model, self.max_len, token_expansion
    c = channel_mlp_dim or mlp_dim or 4 * e
    inits = {
        "proj_w": (lecun, ("embed", "embed_out")), "proj_b": (zeros, ("embed",)),
        "ln_token_scale": (ones, ("embed",)), "ln_token_bias": (zeros, ("embed",)),
        "token_w1": (normal_init(1.0 / math.sqrt(t)), (None, None, None)),
        "token_b1": (zeros, (None, None)),
        "token_w2": (normal_init(1.0 / math.sqrt(t * r)), (None, None, None)),
        "token_b2": (zeros, (None,)),
        "ln_channel_scale": (ones, ("embed",)), "ln_channel_bias": (zeros, ("embed",)),
        "channel_w1": (lecun, ("embed", "mlp")), "channel_b1": (zeros, ("mlp",)),
        "channel_w2": (lecun, ("mlp", "embed")), "channel_b2": (zeros, ("embed",)),
    }
    params = {}
    for name, (init, names) in inits.items():
      names = tuple(None if n == "embed_out" else n for n in names)
      params[name] = make_param(rngs, init, core.PARAM_SHAPES[name](e, t, r, c), names)
    self.params = nnx.Dict(params)

  def mix(self, x, *, positions, mask, head_mask, bias, return_weights):
    del positions
    no_weights(self.mechanism, head_mask, bias, return_weights)
    t = x.shape[1]
    allowed = None if mask is None else mask.dense(t, t)
    p = {k: self.params[k][...] for k in core.PARAM_SHAPES}  # (not .items(): see pooling)
    return core.ninformer_mixing(x, p, allowed=allowed).astype(self.dtype)
