"""Flax NNX layers: attention modules (with a registry and KV cache), positions, blocks,
and logical-axis partitioning helpers. Modules take typed keyword arguments and never read a
config (``attnlab.models`` does).

Importing ``attnlab.nn`` also imports every subpackage of it (``attnlab.nn.mechanisms``: one
file per attention module; ``attnlab.nn.variants``: block-level pieces), so that modules
registering themselves at import time are available to ``attnlab.models.build_model``.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from attnlab.nn.attention import (SHARED_ARGUMENTS, MultiHeadAttention, accepted_arguments,
                                  accepted_mechanism_kwargs, attention_fn,
                                  check_mechanism_kwargs,
                                  get_attention_module, list_attention_mechanisms,
                                  register_attention_module)
from attnlab.nn.blocks import (GeluMLP, SwiGLUMLP, TransformerBlock, TransformerStack,
                               list_mlps, list_norms, make_mlp, make_norm, register_mlp,
                               register_norm)
from attnlab.nn.partitioning import (LOGICAL_AXES, init_sharded, logical_axes, logical_init,
                                     logical_to_mesh_sharding, logical_to_mesh_spec)
from attnlab.nn.positions import (POSITION_KINDS, LearnedPositionEmbedding, alibi_slopes,
                                  apply_rope, check_positions, default_positions, rope_angles,
                                  sinusoidal_embedding)

__all__ = [
    "MultiHeadAttention", "attention_fn", "register_attention_module", "get_attention_module",
    "list_attention_mechanisms", "accepted_arguments", "SHARED_ARGUMENTS",
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
