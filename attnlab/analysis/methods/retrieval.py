"""Retrieval-head score: the copy-paste rate of each head.

"Retrieval Head Mechanistically Explains Long-Context Factuality" (Wu et al., arXiv
2404.15574): while the model reproduces a needle from its context, a head *copies* at a step
when its most-attended position holds exactly the token being produced; the score is the
fraction of the needle's tokens copied that way. Here the steps are the positions selected by
``target_mask`` in one teacher-forced pass (no sampling loop), and the produced token is the
model's argmax prediction there (the paper's generated token) or, with ``use_labels``, the
next token of ``tokens``. The same definition scores MQAR recall heads: the steps are the query
positions, the "needle" is the value stored after the matching key.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run_with_cache
from attnlab.analysis.methods._common import shape

PAPER = "Retrieval Head Mechanistically Explains Long-Context Factuality (arXiv 2404.15574)"


def retrieval_scores(model: Any, tokens: Any, target_mask: Any, *,
                     use_labels: bool = False) -> np.ndarray:
  """``[L, H]`` copy-paste rates.

  Args:
    tokens: int ``[B, T]``.
    target_mask: bool ``[B, T]``: positions ``t`` whose prediction (of token ``t + 1``) is a
      retrieval step; the last position is ignored when ``use_labels``.
    use_labels: the produced token is ``tokens[:, t + 1]`` instead of the argmax prediction.
  """
  tokens = np.asarray(tokens)
  mask = np.asarray(target_mask, bool)
  if mask.shape != tokens.shape:
    raise ValueError(f"target_mask must have the tokens' shape {tokens.shape}, got {mask.shape}")
  logits, cache = run_with_cache(model, tokens, names=["pattern"])
  if use_labels:
    produced = np.concatenate([tokens[:, 1:], np.full((tokens.shape[0], 1), -1)], axis=1)
    mask = mask.copy()
    mask[:, -1] = False
  else:
    produced = np.asarray(jnp.argmax(logits, axis=-1))
  steps = mask.sum()
  if steps == 0:
    raise ValueError("target_mask selects no position")
  n, h = shape(model)
  out = np.zeros((n, h), np.float32)
  for i in range(n):
    top = np.asarray(jnp.argmax(cache[f"pattern.{i}"], axis=-1))  # [B, H, T] key index
    copied = np.take_along_axis(tokens[:, None, :], top, axis=-1)  # token at that key
    hit = (copied == produced[:, None, :]) & mask[:, None, :]
    out[i] = hit.sum(axis=(0, 2)) / steps
  return out
