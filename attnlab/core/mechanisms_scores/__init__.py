"""Score-modifying attention mechanisms as pure functions (no Flax, no state).

Each function follows the shared implementation contract of ``attnlab.core.registry``
(``fn(q, k, v, *, mask, bias, scale, softcap, alibi_slopes, q_offset, head_mask,
return_weights, **hyperparameters)``) and is registered as the ``"xla"`` (dense reference)
implementation of its mechanism, so ``attnlab.attention(q, k, v, mechanism=name, ...)`` works.
Mechanisms whose inputs come from learned parameters (temperatures, relative tables, gates,
frozen matrices) are ``kind="module"``: their NNX modules live in
``attnlab.nn.mechanisms_scores`` and end in these functions.

=================  =======================  ===================================
mechanism          function                 paper
=================  =======================  ===================================
selective_ssa      selective_attention      arXiv 2411.12892 (SSA)
deberta            deberta_attention        arXiv 2006.03654
rcmha              rcmha_attention          arXiv 2308.03429
complexformer      complex_attention        arXiv 2505.10222
gpsa               gpsa_attention           arXiv 2103.10697 (ConViT)
momentum_ema       momentum_attention       arXiv 2212.10559
random_qk          random_qk_attention      arXiv 2307.11353
crate              crate_attention          arXiv 2306.01129 / 2404.02446
=================  =======================  ===================================

Metadata (paper, config overrides, complexity) is registered by
``attnlab.core.catalogue.scores``.
"""

from attnlab.core import registry as _registry
from attnlab.core.mechanisms_scores.complexformer import complex_attention, rotate_polar
from attnlab.core.mechanisms_scores.crate import crate_attention, crate_mssa
from attnlab.core.mechanisms_scores.deberta import deberta_attention, log_bucket, relative_index
from attnlab.core.mechanisms_scores.gpsa import (gpsa_attention, locality_pos_weights,
                                                 positional_logits)
from attnlab.core.mechanisms_scores.momentum import ema_weights, momentum_attention
from attnlab.core.mechanisms_scores.random_qk import random_qk_attention
from attnlab.core.mechanisms_scores.rcmha import rcmha_attention, relative_distance_index
from attnlab.core.mechanisms_scores.selective import selective_attention, visible_keys

# name -> (kind, pure function)
MECHANISMS = {
    "selective_ssa": ("module", selective_attention),
    "deberta": ("module", deberta_attention),
    "rcmha": ("module", rcmha_attention),
    "complexformer": ("module", complex_attention),
    "gpsa": ("module", gpsa_attention),
    "momentum_ema": ("attention", momentum_attention),
    "random_qk": ("module", random_qk_attention),
    "crate": ("module", crate_attention),
}


def _register() -> None:
  for name, (kind, fn) in MECHANISMS.items():
    _registry.register_mechanism(name, kind=kind)
    _registry.register_implementation(name, "xla", fn)


_register()

__all__ = [
    "MECHANISMS", "selective_attention", "visible_keys", "deberta_attention", "relative_index",
    "log_bucket", "rcmha_attention", "relative_distance_index", "complex_attention",
    "rotate_polar", "gpsa_attention", "positional_logits", "locality_pos_weights",
    "momentum_attention", "ema_weights", "random_qk_attention", "crate_attention",
    "crate_mssa",
]
