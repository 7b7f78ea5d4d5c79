"""NiNformer mixer gating unit as an attention replacement (arXiv 2403.02411).

Holds the parameters of ``attnlab.core.mechanisms_mixers.ninformer_mixing`` and ends in it:
``u = x W_p + b_p`` gated by an inner MLP-Mixer block (masked token-mixing MLP over positions,
then a channel MLP). Options (``config.model.attention.kwargs``):

* ``token_expansion`` (int > 0, default 1): token-MLP hidden units per position.
* ``channel_mlp_dim`` (int >= 0, default 0 = ``config.model.mlp_dim``): channel-MLP width.

Token weights are sized by ``config.model.max_len``. Causal models mask them lower-triangular
(see the core function for the departures). No attention weights or heads: ``head_mask``,
``bias`` and ``return_weights`` raise.
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx

from attnlab.core.mechanisms_mixers import ninformer as core
from attnlab.nn.common import cfg_get
from attnlab.nn.mechanisms_mixers._base import (TokenMixer, lecun, make_param, no_weights,
                                                normal_init, ones, zeros)


class NiNformerMixer(TokenMixer):
  kwarg_spec = {"token_expansion": ("int>0", 1), "channel_mlp_dim": ("int>=0", 0)}

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    e, t, r = self.d_model, self.max_len, self.opt("token_expansion")
    c = self.opt("channel_mlp_dim") or cfg_get(cfg, "mlp_dim", 4 * e)
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
