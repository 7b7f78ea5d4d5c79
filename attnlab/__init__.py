"""attnlab: attention mechanisms, Pallas kernels, NNX modules, models and a trainer in JAX/Flax.

``attnlab.attention``, ``attnlab.dot_product_attention`` (a drop-in for
``jax.nn.dot_product_attention``), ``attnlab.masks`` and the mechanism catalogue
(``list_mechanisms``, ``get_mechanism``) come from ``attnlab.core`` (pure JAX). The rest is
imported on demand: ``attnlab.kernels`` (Pallas), ``attnlab.nn`` (NNX modules),
``attnlab.models`` (models built from ``config.model``, ``generate``, Hugging Face
``from_pretrained``), ``attnlab.data`` (grain pipelines), ``attnlab.train`` (the trainer),
``attnlab.analysis`` (``run_with_cache``, interventions, head-level methods),
``attnlab.bench`` (benchmarks) and ``attnlab.catalogue`` (the catalogue table).
"""

from attnlab.core import (alibi_slopes, attention, chunked_attention, dot_product_attention,
                          get_mechanism, list_mechanisms, masks, sigmoid_attention,
                          softmax_attention)

__version__ = "0.1.0"

__all__ = [
    "attention", "list_mechanisms", "get_mechanism", "masks", "softmax_attention",
    "sigmoid_attention", "chunked_attention", "alibi_slopes", "dot_product_attention",
]
