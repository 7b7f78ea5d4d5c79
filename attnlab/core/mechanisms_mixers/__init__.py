"""Token mixers that replace attention, attention ablations, and attention pooling heads, as
pure functions (no Flax, no state).

=================  ==================================  ========================================
catalogue name     pure function                       paper
=================  ==================================  ========================================
ninformer          ninformer_mixing                    NiNformer, arXiv 2403.02411
mixer_none         gated_mlp                           Deconstructing Attention (MLP), 2510.11602
mixer_fixed        core softmax_attention (fixed Q,K)  Deconstructing Attention (RndEmbQK)
decon_approx       taylor_attention                    Deconstructing Attention (Approximate)
decon_nonapprox    self_gated_attention                Deconstructing Attention (Non-approx.)
decon_staticqk     core softmax_attention (static QK)  Deconstructing Attention (StaticEmbQK)
tap_adl            token_aware_average_pool,           Robustifying Token Attention for ViTs,
                   attention_diversification_loss      arXiv 2303.11126
lowrank_mha_pool   lowrank_multihead_pool              LAMA, arXiv 1912.00835
multilayer_pool    multilayer_trainable_pool           Pooling And Attention, arXiv 2409.02727
=================  ==================================  ========================================

``decon_approx`` and ``decon_nonapprox`` follow the shared attention contract of
``attnlab.core.registry`` and are registered here as the ``"xla"`` implementation of their
mechanism (``attnlab.attention(q, k, v, mechanism="decon_approx")``); a plain
``attnlab.nn.MultiHeadAttention`` runs them. The others have parameters: their NNX modules
(``attnlab.nn.mechanisms_mixers``; pooling heads selected by ``config.model.pooling`` in
``attnlab.models.encoder``) end in these functions. Catalogue metadata (paper, config
overrides, complexity) is registered by ``attnlab.core.catalogue.mixers``.
"""

from attnlab.core import registry as _registry
from attnlab.core.mechanisms_mixers._common import layer_norm, masked_softmax, shift_tokens
from attnlab.core.mechanisms_mixers.deconstruct import (Q_ACTIVATIONS, gated_mlp,
                                                        self_gated_attention, taylor_attention)
from attnlab.core.mechanisms_mixers.ninformer import ninformer_mixing, token_mlp
from attnlab.core.mechanisms_mixers.pooling import (CONTEXTS, SUMMARIES, layer_summaries,
                                                    lowrank_multihead_pool, masked_mean,
                                                    multilayer_trainable_pool)
from attnlab.core.mechanisms_mixers.tap import (attention_diversification_loss,
                                                neighbour_offsets, scale_weights,
                                                token_aware_average_pool)

# name -> kind ("attention" entries also have a pure implementation below).
MECHANISMS = {
    "ninformer": "mixer",
    "mixer_none": "mixer",
    "mixer_fixed": "mixer",
    "decon_approx": "attention",
    "decon_nonapprox": "attention",
    "decon_staticqk": "module",
    "tap_adl": "module",
    "lowrank_mha_pool": "pooling",
    "multilayer_pool": "pooling",
}

IMPLEMENTATIONS = {
    "decon_approx": taylor_attention,
    "decon_nonapprox": self_gated_attention,
}


def _register() -> None:
  for name, kind in MECHANISMS.items():
    _registry.register_mechanism(name, kind=kind)
  for name, fn in IMPLEMENTATIONS.items():
    _registry.register_implementation(name, "xla", fn)


_register()

__all__ = [
    "MECHANISMS", "IMPLEMENTATIONS", "ninformer_mixing", "token_mlp", "gated_mlp",
    "taylor_attention", "self_gated_attention", "Q_ACTIVATIONS", "token_aware_average_pool",
    "scale_weights", "neighbour_offsets", "attention_diversification_loss",
    "lowrank_multihead_pool", "multilayer_trainable_pool", "layer_summaries", "masked_mean",
    "CONTEXTS", "SUMMARIES", "layer_norm", "masked_softmax", "shift_tokens",
]
