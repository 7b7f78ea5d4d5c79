"""Attention-layer importance ("What Matters in Transformers?", arXiv 2406.15786).

``attention_layer_importance(model, tokens, ...)`` runs a model built by ``attnlab.models``
(anything with ``model.stack.blocks``) on a batch and returns, per layer, the score
``1 - mean_t cos(X, X + Attn(LN(X)))`` of its attention sublayer
(``attnlab.core.variants.attention_importance``). Layers with low scores are the
redundant ones: put ``layers_to_drop(scores, n)`` in ``config.model.drop_attention_layers``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.variants import attention_drop as drop_core

Array = jax.Array

layers_to_drop = drop_core.layers_to_drop


def attention_layer_importance(model: nnx.Module, tokens: Array, *,
                               token_weights: Array | None = None, **call_kwargs: Any) -> Array:
  """Per-layer attention importance ``[num_layers]`` float32 (NaN for a dropped sublayer).

  Args:
    model: a ``DecoderLM`` / ``EncoderClassifier`` (its blocks are ``model.stack.blocks``).
    tokens: int ``[B, T]`` calibration batch.
    token_weights: ``[B, T]`` weights of the token mean (e.g. 0 on padding); default uniform.
    **call_kwargs: forwarded to the model call (``segment_ids``, ``lengths``, ...).
  """
  blocks = list(model.stack.blocks)
  for b in blocks:
    b.capture_attention_io = True
  try:
    _, inter = nnx.capture(lambda m: m(tokens, **call_kwargs), nnx.Intermediate)(model)
  finally:
    for b in blocks:
      b.capture_attention_io = False
  captured = inter["stack"]["blocks"] if "stack" in inter else {}
  scores = []
  for i in range(len(blocks)):
    entry = captured.get(i) if hasattr(captured, "get") else None
    if entry is None or "attention_io" not in entry:
      scores.append(jnp.float32(jnp.nan))
      continue
    (x_in, x_out), = entry["attention_io"].get_value()
    scores.append(drop_core.attention_importance(x_in, x_out, token_weights=token_weights))
  return jnp.stack(scores).astype(jnp.float32)
