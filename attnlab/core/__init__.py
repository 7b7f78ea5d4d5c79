"""Pure attention math: no Flax, no state, no I/O.

``attention(q, k, v, mechanism=..., implementation=...)`` dispatches to the registered pure
functions; each is importable on its own (``softmax_attention``, ``chunked_attention``, ...).
"""

from attnlab.core import masks, registry
from attnlab.core.api import attention, choose_implementation
from attnlab.core.chunked import chunked_attention
from attnlab.core.common import alibi_slopes
from attnlab.core.registry import (get_mechanism, list_mechanisms, register_implementation,
                                   register_mechanism)
from attnlab.core.sigmoid import sigmoid_attention
from attnlab.core.softmax import softmax_attention
from attnlab.core import catalogue  # noqa: F401  (registers the mechanism catalogue)


def _only_block_kwargs(**call):
  return registry.unaccepted_kwargs(chunked_attention, {k: v for k, v in call.items()
                                                        if k != "normalizer"})


def _register_builtin() -> None:
  register_mechanism(
      "softmax", paper="Attention Is All You Need (arXiv 1706.03762)",
      description="softmax(q k^T * scale + bias) v",
      config={"model.attention.mechanism": "softmax"}, complexity="O(T^2 d) time, O(T d) memory "
      "(chunked/pallas)", kernel="pallas (softmax)")
  register_implementation("softmax", "xla", softmax_attention)
  register_implementation("softmax", "chunked", chunked_attention, supports=_only_block_kwargs)
  register_mechanism(
      "sigmoid",
      paper="Theory, Analysis, and Best Practices for Sigmoid Self-Attention (arXiv 2409.04431)",
      description="sigmoid(q k^T * scale + b) v, b = -log(kv_len)",
      config={"model.attention.mechanism": "sigmoid"}, complexity="O(T^2 d) time, O(T d) "
      "memory (chunked/pallas)", kernel="pallas (FlashSigmoid)")
  register_implementation("sigmoid", "xla", sigmoid_attention)
  register_implementation(
      "sigmoid", "chunked",
      lambda *a, **kw: chunked_attention(*a, normalizer="sigmoid", **kw),
      supports=_only_block_kwargs)


_register_builtin()

__all__ = [
    "attention", "choose_implementation", "masks", "list_mechanisms", "get_mechanism",
    "register_mechanism", "register_implementation", "softmax_attention", "sigmoid_attention",
    "chunked_attention", "alibi_slopes",
]
