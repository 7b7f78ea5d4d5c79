"""AttentionInfluence: score training data by the loss change when key heads are masked.

"AttentionInfluence: Adopting Attention Head Influence for Weak-to-Strong Pretraining Data
Selection" (Hua et al., arXiv 2505.07293): in a small reference model, mask the heads found
important for retrieval/induction, compute each example's loss with and without them, and
score it by the relative increase ``(loss_masked - loss_ref) / loss_ref``; the highest-scoring
examples (those that need those heads, i.e. reasoning / in-context copying) are selected.
Departures: the heads are given (e.g. ``retrieval_scores`` / ``induction_scores`` top-k);
masking is one of ``ablation.MODES`` (default "uniform": the heads' attention made uniform,
close to the paper's attention masking; "zero" zeroes their output).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run
from attnlab.analysis.methods._common import check_heads, shape, token_losses
from attnlab.analysis.methods.ablation import ablation_edits

PAPER = ("AttentionInfluence: Adopting Attention Head Influence for Weak-to-Strong "
         "Pretraining Data Selection (arXiv 2505.07293)")


def attention_influence(model: Any, examples: Any, heads: Sequence[tuple[int, int]], *,
                        mode: str = "uniform", batch_size: int = 16,
                        loss_mask: Any = None) -> dict[str, np.ndarray]:
  """Per-example ``{"loss_ref": [N], "loss_masked": [N], "score": [N]}`` for token rows
  ``examples [N, T]``; ``loss_mask [N, T-1]`` selects the predicted positions counted."""
  examples = np.asarray(examples)
  n_ex, t = examples.shape
  mask = np.ones((n_ex, t - 1), np.float32) if loss_mask is None else np.asarray(
      loss_mask, np.float32)
  n, h = shape(model)
  w = np.zeros((n, h), np.float32)
  for layer, head in check_heads(heads, model):
    w[layer, head] = 1.0
  if not w.any():
    raise ValueError("heads must name at least one (layer, head)")
  if mode not in ("uniform", "zero"):
    raise ValueError(f"mode must be 'uniform' or 'zero', got {mode!r}")
  ref_edits = ablation_edits(model, np.zeros((n, h)), mode=mode)
  mask_edits = ablation_edits(model, w, mode=mode)
  ref, masked = [], []
  for s in range(0, n_ex, batch_size):
    rows = examples[s:s + batch_size]
    pad = batch_size - rows.shape[0]
    batch = np.concatenate([rows, np.repeat(rows[-1:], pad, 0)]) if pad else rows
    m = jnp.asarray(np.concatenate([mask[s:s + batch_size],
                                    np.repeat(mask[s + rows.shape[0] - 1:][:1], pad, 0)])
                    if pad else mask[s:s + batch_size])
    for edits, out in ((ref_edits, ref), (mask_edits, masked)):
      loss = token_losses(run(model, batch, edits=edits), batch)
      per = jnp.sum(loss * m, -1) / jnp.maximum(m.sum(-1), 1.0)
      out.append(np.asarray(per)[:rows.shape[0]])
  ref_a, masked_a = np.concatenate(ref), np.concatenate(masked)
  return {"loss_ref": ref_a, "loss_masked": masked_a,
          "score": (masked_a - ref_a) / np.maximum(ref_a, 1e-8)}


def select(scores: Any, k: int) -> np.ndarray:
  """Indices of the ``k`` highest scores, best first."""
  return np.argsort(-np.asarray(scores), kind="stable")[:k]
