"""NNX modules for ``attnlab.core.mechanisms_mixers``: token mixers replacing attention,
attention ablations with parameters, TAP + ADL, and attention pooling heads.

Importing this package registers the attention replacements for
``config.model.attention.mechanism`` (``register_attention_module``). The pooling heads
(``POOLINGS``) are selected by ``config.model.pooling`` and registered by
``attnlab.models.encoder``. "decon_approx" and "decon_nonapprox" need no module (a plain
``MultiHeadAttention`` calls their pure functions).
"""

from attnlab.core import mechanisms_mixers as _core  # noqa: F401  (core registrations)
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms_mixers._base import FrozenRandom, TokenMixer
from attnlab.nn.mechanisms_mixers.deconstruct import (FixedQKMixer, MixerNone,
                                                      StaticEmbQKAttention, StaticInputTap,
                                                      matched_hidden_dim)
from attnlab.nn.mechanisms_mixers.ninformer import NiNformerMixer
from attnlab.nn.mechanisms_mixers.pooling import (POOLINGS, LowRankMHAPool, MultiLayerPool,
                                                  PoolingHead)
from attnlab.nn.mechanisms_mixers.tap import TAPAttention

MODULES = {
    "ninformer": NiNformerMixer,
    "mixer_none": MixerNone,
    "mixer_fixed": FixedQKMixer,
    "decon_staticqk": StaticEmbQKAttention,
    "tap_adl": TAPAttention,
}

for _name, _cls in MODULES.items():
  register_attention_module(_name, _cls)

__all__ = ["MODULES", "POOLINGS", "TokenMixer", "FrozenRandom", "NiNformerMixer", "MixerNone",
           "FixedQKMixer", "StaticEmbQKAttention", "StaticInputTap", "TAPAttention",
           "PoolingHead", "LowRankMHAPool", "MultiLayerPool", "matched_hidden_dim"]
