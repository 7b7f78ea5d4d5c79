"""Flax NNX layers: attention modules (with a registry and KV cache), positions, blocks,
and logical-axis partitioning helpers.

Importing ``attnlab.nn`` also imports every subpackage of it (e.g. ``attnlab.nn.mechanisms_*``),
so that plug-ins registering attention modules, norms or MLPs at import time are available to
``attnlab.models.build_model`` and config validation.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from attnlab.nn.attention import (MultiHeadAttention, accepted_mechanism_kwargs,
                                  check_attention_config, check_mechanism_kwargs,
                                  get_attention_module, list_attention_mechanisms,
                                  make_attention, register_attention_module)
from attnlab.nn.blocks import (GeluMLP, SwiGLUMLP, TransformerBlock, TransformerStack,
                               list_mlps, list_norms, make_mlp, make_norm, register_mlp,
                               register_norm)
from attnlab.nn.partitioning import (LOGICAL_AXES, init_sharded, logical_axes, logical_init,
                                     logical_to_mesh_sharding, logical_to_mesh_spec)
from attnlab.nn.positions import (POSITION_KINDS, LearnedPositionEmbedding, alibi_slopes,
                                  apply_rope, check_positions, default_positions, rope_angles,
                                  sinusoidal_embedding)

__all__ = [
    "MultiHeadAttention", "register_attention_module", "get_attention_module",
    "list_attention_mechanisms", "make_attention", "check_attention_config",
    "accepted_mechanism_kwargs", "check_mechanism_kwargs",
    "TransformerBlock", "TransformerStack", "GeluMLP", "SwiGLUMLP", "make_norm", "make_mlp",
    "register_norm", "register_mlp", "list_norms", "list_mlps",
    "LOGICAL_AXES", "logical_init", "logical_axes", "logical_to_mesh_spec",
    "logical_to_mesh_sharding", "init_sharded",
    "POSITION_KINDS", "apply_rope", "rope_angles", "sinusoidal_embedding",
    "LearnedPositionEmbedding", "default_positions", "check_positions", "alibi_slopes",
]

for _info in _pkgutil.iter_modules(__path__):
  if _info.ispkg:
    _importlib.import_module(f"{__name__}.{_info.name}")
