"""NNX pieces of the block- and depth-level mechanisms (``attnlab.core.mechanisms_blocks``).

Importing this package registers the layer-aware norms ("layernorm_scaled", "rmsnorm_scaled",
"layernorm_prepbn") in ``attnlab.nn.blocks``; ``attnlab.nn.blocks`` imports it on first use.
The stack reads the block-level config keys through ``attnlab.nn.variants.config``.
"""

from attnlab.nn import blocks as _blocks
from attnlab.nn.variants import config
from attnlab.nn.variants.attention_drop import attention_layer_importance, layers_to_drop
from attnlab.nn.variants.echo import EchoAttention
from attnlab.nn.variants.norms import NORMS, ProgressiveRepBN, ScaledNorm
from attnlab.nn.variants.routing import LayerRouter
from attnlab.nn.variants.wide_deep import wide_deep_configs

for _name, _factory in NORMS.items():
  _blocks.register_norm(_name, _factory)

__all__ = ["config", "attention_layer_importance", "layers_to_drop", "EchoAttention",
           "ProgressiveRepBN", "ScaledNorm", "LayerRouter", "wide_deep_configs"]
