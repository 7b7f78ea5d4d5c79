"""Pallas kernels: flash attention (softmax and sigmoid), forward and backward.

Importing this package registers the ``"pallas"`` implementation of the ``"softmax"`` and
``"sigmoid"`` mechanisms (``attnlab.attention(..., implementation="pallas")``); ``"auto"``
picks it on GPU and TPU when ``supports`` accepts the call, else falls back to ``"chunked"``.
On CPU the kernels run in Pallas interpret mode.
"""

from attnlab.core import registry
from attnlab.kernels import autotune, kmask
from attnlab.kernels.flash import (BACKENDS, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, build_table,
                                   flash_attention, table_layout, tile_states,
                                   unsupported_reason)


def flash_softmax_attention(q, k, v, **kwargs):
  """FlashAttention-2 softmax attention (arXiv 2307.08691); see ``flash_attention``."""
  return flash_attention(q, k, v, normalizer="softmax", **kwargs)


def flash_sigmoid_attention(q, k, v, **kwargs):
  """FlashSigmoid attention (arXiv 2409.04431); see ``flash_attention``."""
  return flash_attention(q, k, v, normalizer="sigmoid", **kwargs)


def _register() -> None:
  registry.register_implementation(
      "softmax", "pallas", flash_softmax_attention,
      supports=lambda **call: unsupported_reason(normalizer="softmax", **call),
      auto_platforms=("gpu", "tpu"))
  registry.register_implementation(
      "sigmoid", "pallas", flash_sigmoid_attention,
      supports=lambda **call: unsupported_reason(normalizer="sigmoid", **call),
      auto_platforms=("gpu", "tpu"))


_register()

__all__ = [
    "flash_attention", "flash_softmax_attention", "flash_sigmoid_attention",
    "unsupported_reason", "tile_states", "build_table", "table_layout", "autotune", "kmask", "BACKENDS",
    "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS",
]
