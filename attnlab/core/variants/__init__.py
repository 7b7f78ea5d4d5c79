"""Block- and depth-level mechanisms as pure functions (no Flax, no state).

These change how blocks are wired rather than the attention scores; their NNX pieces live in
``attnlab.nn.variants``, the transformer stack (``attnlab.nn.blocks``) takes them as typed
arguments, and the model builder (``attnlab.models``) reads them from typed fields of the
model config. Each file registers its catalogue entry (kind "block") at its bottom.

=====================  =======================================  ==========================
catalogue name         functions                                paper
=====================  =======================================  ==========================
interleave             layer_mechanisms                         arXiv 2510.11602
echoatt                echo_attention, echo_sources             arXiv 2409.14595
layernorm_scaling      scaled_layer_norm, depth_scale           arXiv 2502.05795
prepbn                 repbn, fold_repbn, prepbn_lambda, ...    arXiv 2405.11582 (SLAB)
attention_drop         attention_importance, layers_to_drop     arXiv 2406.15786
first_router           router_probability, gated_residual, ...  arXiv 2410.12513 (FiRST)
wide_deep              wide_deep_shapes                         arXiv 2210.00640
=====================  =======================================  ==========================
"""

from attnlab.core.variants.attention_drop import (attention_importance,
                                                           check_drop_layers, layers_to_drop,
                                                           token_cosine)
from attnlab.core.variants.depth_scaling import depth_scale, scaled_layer_norm
from attnlab.core.variants.echo import echo_attention, echo_sources
from attnlab.core.variants.interleave import layer_mechanisms
from attnlab.core.variants.prepbn import (batch_moments, fold_repbn, layer_norm,
                                                   prepbn_lambda, progressive_norm, repbn,
                                                   update_running)
from attnlab.core.variants.routing import (DECODE_POLICIES, TRAIN_GATES, gated_residual,
                                                    hard_gate, prefill_decision,
                                                    router_probability, skip_regularizer,
                                                    straight_through_gate, train_gate)
from attnlab.core.variants.wide_deep import divisor_depths, wide_deep_shapes

__all__ = [
    "attention_importance", "check_drop_layers", "layers_to_drop", "token_cosine",
    "depth_scale", "scaled_layer_norm", "echo_attention", "echo_sources", "layer_mechanisms",
    "batch_moments", "fold_repbn", "layer_norm", "prepbn_lambda", "progressive_norm", "repbn",
    "update_running", "DECODE_POLICIES", "TRAIN_GATES", "gated_residual", "hard_gate",
    "prefill_decision", "router_probability", "skip_regularizer", "straight_through_gate",
    "train_gate", "divisor_depths", "wide_deep_shapes",
]
