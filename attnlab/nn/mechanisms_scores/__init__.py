"""NNX modules for the score-modifying mechanisms of ``attnlab.core.mechanisms_scores``.

Each subclasses ``attnlab.nn.MultiHeadAttention`` (projections, RoPE/ALiBi, KV cache, analysis
hooks unchanged), holds the mechanism's learned (or frozen) tensors, and ends its ``attend`` in
``attnlab.attention(..., mechanism=name, <arrays>)``. Importing this package registers them for
``config.model.attention.mechanism``.
"""

from attnlab.core import mechanisms_scores as _core  # noqa: F401  (core registrations)
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms_scores.complexformer import ComplexFormerAttention
from attnlab.nn.mechanisms_scores.crate import CRATEAttention
from attnlab.nn.mechanisms_scores.deberta import DebertaAttention
from attnlab.nn.mechanisms_scores.gpsa import GPSAttention
from attnlab.nn.mechanisms_scores.random_qk import FrozenRandom, RandomQKAttention
from attnlab.nn.mechanisms_scores.rcmha import RCMHAttention, causal_depthwise_conv
from attnlab.nn.mechanisms_scores.selective import SelectiveAttention

MODULES = {
    "selective_ssa": SelectiveAttention,
    "deberta": DebertaAttention,
    "rcmha": RCMHAttention,
    "complexformer": ComplexFormerAttention,
    "gpsa": GPSAttention,
    "random_qk": RandomQKAttention,
    "crate": CRATEAttention,
}
# "momentum_ema" has no parameters: plain MultiHeadAttention calls its pure function.

for _name, _cls in MODULES.items():
  register_attention_module(_name, _cls)

__all__ = ["MODULES", "SelectiveAttention", "DebertaAttention", "RCMHAttention",
           "ComplexFormerAttention", "GPSAttention", "RandomQKAttention", "FrozenRandom",
           "CRATEAttention", "causal_depthwise_conv"]
