"""NNX pieces of the block- and depth-level mechanisms (``attnlab.core.variants``).

Importing this package registers the layer-aware norms ("layernorm_scaled", "rmsnorm_scaled",
"layernorm_prepbn") in ``attnlab.nn.blocks``; ``attnlab.nn.blocks`` imports it on first use.
Each piece takes typed keyword arguments; the model builder (``attnlab.models``) reads the
block-level keys of ``config.model`` and places them.
"""

from attnlab.nn import blocks as _blocks
from attnlab.nn.variants.attention_drop import attention_layer_importance, layers_to_drop
from attnlab.nn.variants.echo import EchoAttention
from attnlab.nn.variants.norms import NORMS, ProgressiveRepBN, ScaledNorm
from attnlab.nn.variants.routing import LayerRouter

for _name, _factory in NORMS.items():
  _blocks.register_norm(_name, _factory)

__all__ = ["attention_layer_importance", "layers_to_drop", "EchoAttention",
           "ProgressiveRepBN", "ScaledNorm", "LayerRouter"]
