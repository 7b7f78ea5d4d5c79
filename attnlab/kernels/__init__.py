"""Pallas kernels: flash attention (softmax and sigmoid), forward and backward.

Importing this package registers the ``"pallas"`` implementation of the ``"softmax"`` and
``"sigmoid"`` mechanisms (``attnlab.attention(..., implementation="pallas")``); ``"auto"``
picks it on GPU and TPU when ``supports`` accepts the call, else falls back to ``"chunked"``.
On CPU the kernels run in Pallas interpret mode.

The code lives in ``attnlab.kernels.flash`` (one module per part: entry point, support
checks, tile tables, forward, backward, Triton and Mosaic TPU drivers; see its docstring).
``autotune`` and ``kmask`` are that package's ``autotune`` and ``masks`` modules.
"""

import sys

from attnlab.kernels.flash import autotune
from attnlab.kernels.flash import masks as kmask  # public name from before the split
from attnlab.kernels.flash.api import (flash_attention, flash_sigmoid_attention,
                                       flash_softmax_attention)
from attnlab.kernels.flash.support import (BACKENDS, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS,
                                           unsupported_reason)
from attnlab.kernels.flash.tables import build_table, table_layout, tile_states

# ``import attnlab.kernels.autotune`` / ``attnlab.kernels.kmask`` keep working: same modules.
sys.modules.setdefault(__name__ + ".autotune", autotune)
sys.modules.setdefault(__name__ + ".kmask", kmask)

__all__ = [
    "flash_attention", "flash_softmax_attention", "flash_sigmoid_attention",
    "unsupported_reason", "tile_states", "build_table", "table_layout", "autotune", "kmask",
    "BACKENDS", "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS",
]
