"""HeadHunter and SoftPAG: per-head attention perturbation guidance.

"Fine-Grained Perturbation Guidance via Attention Head Selection" (Ahn et al., arXiv
2506.10978). SoftPAG perturbs a head by interpolating its attention map towards the identity,
``(1 - alpha) softmax(QK^T) V + alpha V``; guidance extrapolates away from the perturbed model,
``out + w (out - out_perturbed)``; HeadHunter greedily grows the set of perturbed heads that
best serves a user objective. Departures: the paper guides a diffusion transformer's denoiser;
here the guided quantity is the LM's logits, and the objective is any function of
``(clean logits, perturbed logits)``. The interpolation is applied to the head output ``z``
with the head's own values, so it runs through fused kernels (``v_mix`` edit).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run
from attnlab.analysis.hooks import Edit
from attnlab.analysis.methods._common import check_heads, shape

PAPER = "Fine-Grained Perturbation Guidance via Attention Head Selection (arXiv 2506.10978)"
Objective = Callable[[jax.Array, jax.Array], Any]


def softpag_edits(alpha: Any) -> list[Edit]:
  """``alpha [L, H]`` in [0, 1] -> one ``v_mix`` edit per layer."""
  a = jnp.asarray(alpha, jnp.float32)
  if a.ndim != 2:
    raise ValueError(f"alpha must have shape [num_layers, num_heads], got {a.shape}")
  return [Edit(f"v_mix.{i}", mix=a[i].reshape(1, 1, -1, 1)) for i in range(a.shape[0])]


def alpha_for(model: Any, heads: Sequence[tuple[int, int]], alpha: float) -> np.ndarray:
  n, h = shape(model)
  out = np.zeros((n, h), np.float32)
  for layer, head in heads:
    out[layer, head] = alpha
  return out


def guided_logits(model: Any, tokens: Any, heads: Sequence[tuple[int, int]], *,
                  alpha: float = 1.0, scale: float = 1.0) -> jax.Array:
  """``logits + scale * (logits - logits_perturbed)`` with SoftPAG on ``heads``."""
  clean = run(model, tokens, edits=softpag_edits(alpha_for(model, [], alpha)))
  pert = run(model, tokens, edits=softpag_edits(alpha_for(model, heads, alpha)))
  return clean + scale * (clean - pert)


def kl_objective(positions: Any = None) -> Objective:
  """Objective: mean KL(clean || perturbed) of the next-token distributions (at
  ``positions``, all when None): how much perturbing the heads changes the model."""
  def f(clean, pert):
    if positions is not None:
      clean, pert = clean[:, jnp.asarray(positions)], pert[:, jnp.asarray(positions)]
    lp, lq = jax.nn.log_softmax(clean, -1), jax.nn.log_softmax(pert, -1)
    return jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1))
  return f


def head_hunter(model: Any, tokens: Any, objective: Objective, *, k: int = 3,
                alpha: float = 1.0, candidates: Sequence[tuple[int, int]] | None = None
                ) -> dict[str, Any]:
  """Greedy head selection: at each of ``k`` rounds add the candidate head whose SoftPAG
  perturbation (together with the heads chosen so far) maximises ``objective(clean,
  perturbed)``. Returns ``{"selected": [(l, h), ...], "gains": [objective after each
  round], "first_round": [L, H] objective of each head alone (NaN for non-candidates)}``."""
  n, h = shape(model)
  cands = ([(i, j) for i in range(n) for j in range(h)] if candidates is None
           else check_heads(candidates, model))
  clean = run(model, tokens, edits=softpag_edits(np.zeros((n, h))))
  selected: list[tuple[int, int]] = []
  gains: list[float] = []
  first = np.full((n, h), np.nan, np.float32)
  for round_ in range(min(k, len(cands))):
    best, best_val = None, -np.inf
    for head in cands:
      if head in selected:
        continue
      pert = run(model, tokens, edits=softpag_edits(alpha_for(model, selected + [head], alpha)))
      val = float(objective(clean, pert))
      if round_ == 0:
        first[head] = val
      if val > best_val:
        best, best_val = head, val
    selected.append(best)
    gains.append(best_val)
  return {"selected": selected, "gains": gains, "first_round": first}
