"""Sigmoid attention, dense reference.

"Theory, Analysis, and Best Practices for Sigmoid Self-Attention" (Ramapuram et al.,
arXiv 2409.04431): ``out = sigmoid(q k^T * scale + b) v`` with the scalar bias
``b = -log(n)`` by default, n the sequence length (we use ``kv_len``). Rows are not normalised.
Masked pairs contribute 0. Extras shared with softmax: additive bias, soft-capping, ALiBi.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array


def default_sigmoid_bias(kv_len: int, sigmoid_bias: float | None) -> float:
  return -math.log(kv_len) if sigmoid_bias is None else float(sigmoid_bias)


def sigmoid_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                      v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                      bias: Array | None = None, scale: float | None = None,
                      softcap: float | None = None, alibi_slopes: Array | None = None,
                      q_offset: Any = 0, head_mask: Array | None = None,
                      return_weights: bool = False, sigmoid_bias: float | None = None,
                      score_mod: Any = None):
  """Dense sigmoid attention; shapes as ``softmax_attention``.

  ``sigmoid_bias``: the scalar b added to every logit (default ``-log(kv_len)``).
  ``score_mod``: as ``softmax_attention``'s (applied before ``sigmoid_bias``).
  """
  common.check_score_mod(score_mod)
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  logits = common.apply_score_mod(score_mod, logits, q_offset)
  weights = jax.nn.sigmoid(logits + default_sigmoid_bias(k.shape[1], sigmoid_bias))
  allowed = softmax_lib.dense_mask(mask, q.shape[1], k.shape[1])
  if allowed is not None:
    weights = jnp.where(allowed, weights, 0.0)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


# Registration. chunked.py imports this module, so it is imported here, after the functions
# it uses are defined.
from attnlab.core import chunked  # noqa: E402  pylint: disable=g-import-not-at-top
from attnlab.core import registry  # noqa: E402  pylint: disable=g-import-not-at-top


def chunked_sigmoid_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                              v: Float[Array, "B Tk K Dv"], **kwargs: Any):
  """``chunked_attention`` with the sigmoid normaliser (FlashSigmoid order, O(T) memory)."""
  return chunked.chunked_attention(q, k, v, normalizer="sigmoid", **kwargs)


registry.register_mechanism(
    "sigmoid", kind="attention",
    paper="Theory, Analysis, and Best Practices for Sigmoid Self-Attention (arXiv 2409.04431)",
    description="sigmoid(q k^T * scale + b) v, b = -log(kv_len)",
    complexity="O(T^2 d) time, O(T d) memory (chunked/pallas)", kernel="pallas (FlashSigmoid)",
    implementations={"xla": sigmoid_attention})
registry.register_implementation("sigmoid", "chunked", chunked_sigmoid_attention,
                                 supports=softmax_lib.chunked_refusal("normalizer"))
