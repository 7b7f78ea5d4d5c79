"""ZeroTuning: per-head scaling of the attention paid to the initial token.

"ZeroTuning: Unlocking the Initial Token's Power to Enhance Large Language Models Without
Training" (Han et al., arXiv 2505.11739). The weight of key 0 is scaled by ``gamma`` and the
row renormalised, i.e. ``log(gamma)`` is added to the logit of key 0 (a ``scores`` edit, so it
runs through fused kernels). The supervised mode picks ``gamma`` minimising the loss on
labelled positions, the unsupervised mode the mean entropy of the predictions. Departure:
the paper first sorts heads into "up"/"down"-effective groups and tunes one gamma per group;
``zerotuning_search`` does a coordinate search over a gamma grid, head by head (others at 1),
then applies every head's best gamma together. A whole search is one compilation.
"""

from __future__ import annotations


from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run
from attnlab.analysis.hooks import Edit
from attnlab.analysis.methods._common import check_heads, shape, token_losses

PAPER = ("ZeroTuning: Unlocking the Initial Token's Power to Enhance Large Language Models "
         "Without Training (arXiv 2505.11739)")


def zerotuning_edits(gammas: Any, seq_len: int) -> list[Edit]:
  """``gammas [L, H]`` (> 0) -> a ``log(gamma)`` logit bias on key 0 for every layer."""
  g = jnp.asarray(gammas, jnp.float32)
  if g.ndim != 2:
    raise ValueError(f"gammas must have shape [num_layers, num_heads], got {g.shape}")
  col = jnp.zeros((seq_len,), jnp.float32).at[0].set(1.0)
  return [Edit(f"scores.{i}", add=jnp.log(g[i])[None, :, None, None] * col)
          for i in range(g.shape[0])]


def objective(logits: Any, tokens: Any, target_mask: Any, kind: str) -> float:
  """Mean loss ("loss", supervised) or mean prediction entropy ("entropy", unsupervised) over
  the positions ``t`` where ``target_mask [B, T-1]`` (predicting token ``t + 1``)."""
  mask = jnp.asarray(target_mask, jnp.float32)
  if kind == "loss":
    per = token_losses(logits, tokens)
  elif kind == "entropy":
    lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    per = -jnp.sum(jnp.exp(lp) * lp, axis=-1)
  else:
    raise ValueError(f"objective must be 'loss' or 'entropy', got {kind!r}")
  return float(jnp.sum(per * mask) / jnp.maximum(mask.sum(), 1.0))


def zerotuning_search(model: Any, tokens: Any, *, target_mask: Any = None,
                      kind: str = "loss", grid: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
                      heads: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
  """Per-head coordinate search of gamma over ``grid``.

  Returns ``{"gammas": [L, H] best gamma per head (1 where no value beats 1), "objective":
  [L, H, G] objective per head and grid value, "base": objective at gamma = 1, "tuned":
  objective with every head at its best gamma}``.
  """
  tokens = np.asarray(tokens)
  b, t = tokens.shape
  mask = np.ones((b, t - 1), bool) if target_mask is None else np.asarray(target_mask, bool)
  if mask.shape != (b, t - 1):
    raise ValueError(f"target_mask must have shape [B, T-1]={(b, t - 1)}, got {mask.shape}")
  if any(g <= 0 for g in grid):
    raise ValueError(f"grid values must be > 0, got {list(grid)}")
  n, h = shape(model)
  heads = [(i, j) for i in range(n) for j in range(h)] if heads is None else check_heads(
      heads, model)
  base = objective(run(model, tokens, edits=zerotuning_edits(np.ones((n, h)), t)), tokens,
                   mask, kind)
  table = np.full((n, h, len(grid)), base, np.float32)
  best = np.ones((n, h), np.float32)
  for layer, head in heads:
    for gi, g in enumerate(grid):
      gam = np.ones((n, h), np.float32)
      gam[layer, head] = g
      table[layer, head, gi] = objective(run(model, tokens, edits=zerotuning_edits(gam, t)),
                                         tokens, mask, kind)
    gi = int(np.argmin(table[layer, head]))
    if table[layer, head, gi] < base - 1e-6:
      best[layer, head] = grid[gi]
  tuned = objective(run(model, tokens, edits=zerotuning_edits(best, t)), tokens, mask, kind)
  return {"gammas": best, "objective": table, "base": base, "tuned": tuned,
          "grid": list(grid), "log_gamma_bias": np.log(best)}
