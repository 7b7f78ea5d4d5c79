"""attnlab: attention mechanisms, kernels, a trainer and analysis tools in JAX/Flax.

``attnlab.attention`` and ``attnlab.masks`` come from ``attnlab.core`` (pure JAX); import
``attnlab.nn``, ``attnlab.models``, ``attnlab.train`` or ``attnlab.analysis`` for the rest.
"""

from attnlab.core import (alibi_slopes, attention, chunked_attention, get_mechanism,
                          list_mechanisms, masks, sigmoid_attention, softmax_attention)

__version__ = "0.1.0"

__all__ = [
    "attention", "list_mechanisms", "get_mechanism", "masks", "softmax_attention",
    "sigmoid_attention", "chunked_attention", "alibi_slopes",
]
