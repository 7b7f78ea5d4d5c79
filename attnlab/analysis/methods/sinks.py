"""Attention sinks: detection, and ACT attention calibration.

"Unveiling and Harnessing Hidden Attention Sinks: Training-Free Attention Calibration for
Enhancing LLMs" (Yu et al., arXiv 2406.15765). A key ``k`` is a sink of head ``(l, h)`` when
the average attention it receives from the queries that can see it exceeds ``alpha / N``
(N: the number of visible keys, averaged; the paper's criterion with its ``alpha``, default
5). ACT then scales the attention paid to sinks other than the first token by ``beta``
(the removed mass goes to the other keys in proportion to their weights). Since scaling a
weight by ``beta`` and renormalising is adding ``log(beta)`` to its logit, calibration here
is an additive logit bias on the sink keys (``scores`` edit): it runs through fused kernels.
Departure: the paper picks the heads to calibrate by a small search on a calibration set;
``act_edits`` calibrates the heads you give it (e.g. from ``sink_heads``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run_with_cache
from attnlab.analysis.hooks import Edit
from attnlab.analysis.methods._common import shape

PAPER = ("Unveiling and Harnessing Hidden Attention Sinks: Training-Free Attention "
         "Calibration for Enhancing LLMs (arXiv 2406.15765)")


def _patterns(model: Any, tokens: Any) -> list[np.ndarray]:
  _, cache = run_with_cache(model, tokens, names=["pattern"])
  return [np.asarray(cache[f"pattern.{i}"]) for i in cache.layers("pattern")]


def received_attention(model: Any, tokens: Any, patterns: list[np.ndarray] | None = None
                       ) -> np.ndarray:
  """``[L, H, T]``: mean attention each key position receives from the queries that see it
  (causal: queries ``>= k``), averaged over the batch."""
  patterns = _patterns(model, tokens) if patterns is None else patterns
  t = patterns[0].shape[-1]
  visible = np.arange(t, 0, -1, dtype=np.float32)  # queries seeing key k: T - k
  return np.stack([p.sum(axis=2).mean(axis=0) / visible for p in patterns])


def sink_scores(model: Any, tokens: Any, *, alpha: float = 5.0) -> dict[str, np.ndarray]:
  """``{"first_token": [L, H] mean attention to position 0, "received": [L, H, T],
  "is_sink": [L, H, T] bool}``. ``is_sink``: received > alpha / (mean visible keys)."""
  patterns = _patterns(model, tokens)
  rec = received_attention(model, tokens, patterns)
  t = rec.shape[-1]
  mean_keys = np.arange(1, t + 1, dtype=np.float32).mean()
  first = np.stack([p[..., 0].mean(axis=(0, 2)) for p in patterns])
  return {"first_token": first, "received": rec, "is_sink": rec > alpha / mean_keys}


def sink_heads(scores: dict[str, np.ndarray], *, threshold: float = 0.5) -> list[tuple[int, int]]:
  """Heads whose mean attention to the first token is at least ``threshold``."""
  first = scores["first_token"]
  return [(int(i), int(j)) for i, j in zip(*np.nonzero(first >= threshold))]


def act_edits(model: Any, heads: Sequence[tuple[int, int]], sink_positions: Sequence[int], *,
              seq_len: int, beta: float = 0.4) -> list[Edit]:
  """ACT: scale the attention of ``heads`` to ``sink_positions`` by ``beta`` (renormalised):
  ``log(beta)`` logit bias on those keys, one ``scores`` edit per layer involved."""
  if not 0 < beta:
    raise ValueError(f"beta must be > 0, got {beta}")
  n, h = shape(model)
  bias = np.zeros((n, h, seq_len), np.float32)
  for layer, head in heads:
    bias[layer, head, list(sink_positions)] = math.log(beta)
  return [Edit(f"scores.{i}", add=jnp.asarray(bias[i])[None, :, None, :])
          for i in sorted({layer for layer, _ in heads})]
