"""Pure attention math: no Flax, no state, no I/O.

``attention(q, k, v, mechanism=..., implementation=...)`` dispatches to the registered pure
functions. Each mechanism lives in one file of ``attnlab.core.mechanisms`` (its function and
its registration); block- and depth-level variants in ``attnlab.core.variants``; pooling heads'
math in ``attnlab.core.pooling``. Importing this package registers all of them.
"""

from attnlab.core import masks, registry
from attnlab.core.api import attention, choose_implementation
from attnlab.core.chunked import chunked_attention
from attnlab.core.common import alibi_slopes
from attnlab.core.dot_product_attention import dot_product_attention
from attnlab.core import mechanisms  # noqa: F401  (registers every mechanism)
from attnlab.core import pooling  # noqa: F401  (registers the pooling heads)
from attnlab.core import variants  # noqa: F401  (registers the block variants)
from attnlab.core.mechanisms.sigmoid import sigmoid_attention
from attnlab.core.mechanisms.softmax import softmax_attention
from attnlab.core.registry import (get_mechanism, list_mechanisms, register_implementation,
                                   register_mechanism)

__all__ = [
    "attention", "choose_implementation", "masks", "list_mechanisms", "get_mechanism",
    "register_mechanism", "register_implementation", "softmax_attention", "sigmoid_attention",
    "chunked_attention", "alibi_slopes", "dot_product_attention",
]
