"""Single-head ablation sweep on a chosen metric.

"On the Role of Attention Heads in Large Language Model Safety" (Zhou et al., arXiv
2410.13708) scores each head by the change of a metric (there, the refusal probability on
harmful prompts) when the head alone is ablated (Ships). Its ablation makes the head's
attention undifferentiated by scaling its query by a small epsilon, which is mode
``"uniform"`` here (query scaled by ``eps``; with eps = 0 the weights are uniform over the
visible keys). Modes ``"zero"`` (head output z = 0) and ``"mean"`` (z replaced by its mean
over the batch and positions) are the usual alternatives. One compilation serves the sweep.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run, run_with_cache
from attnlab.analysis.hooks import Edit
from attnlab.analysis.methods._common import shape

PAPER = "On the Role of Attention Heads in Large Language Model Safety (arXiv 2410.13708)"
MODES = ("zero", "mean", "uniform")


def ablation_edits(model: Any, weights: Any, *, mode: str = "zero", eps: float = 0.0,
                   mean_z: dict[str, Any] | None = None) -> list[Edit]:
  """Edits ablating heads where ``weights [L, H]`` is 1 (fractions interpolate)."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
  w = jnp.asarray(weights, jnp.float32)
  n, _ = shape(model)
  out = []
  for i in range(n):
    m = w[i].reshape(1, 1, -1, 1)
    if mode == "zero":
      out.append(Edit(f"z.{i}", scale=1.0 - m))
    elif mode == "uniform":
      out.append(Edit(f"q.{i}", scale=1.0 - m * (1.0 - eps)))
    else:
      if mean_z is None:
        raise ValueError("mode='mean' needs mean_z (see mean_head_outputs)")
      out.append(Edit(f"z.{i}", value=mean_z[f"z.{i}"], mix=m))
  return out


def mean_head_outputs(model: Any, tokens: Any) -> dict[str, jax.Array]:
  """``{"z.l": [H, D]}`` mean head outputs over batch and positions (for mode "mean")."""
  _, cache = run_with_cache(model, tokens, names=["z"])
  return {k: jnp.mean(v, axis=(0, 1)) for k, v in cache.items()}


def ablation_sweep(model: Any, tokens: Any, metric: Callable[[jax.Array], Any], *,
                   mode: str = "zero", eps: float = 0.0, reference_tokens: Any = None
                   ) -> dict[str, Any]:
  """``{"base": metric of the intact model, "ablated": [L, H] metric with head (l, h)
  ablated, "delta": ablated - base}``."""
  n, h = shape(model)
  mean_z = (mean_head_outputs(model, tokens if reference_tokens is None else reference_tokens)
            if mode == "mean" else None)
  base = float(metric(run(model, tokens, edits=ablation_edits(model, np.zeros((n, h)),
                                                               mode=mode, eps=eps,
                                                               mean_z=mean_z))))
  out = np.zeros((n, h), np.float32)
  for i in range(n):
    for j in range(h):
      w = np.zeros((n, h), np.float32)
      w[i, j] = 1.0
      out[i, j] = float(metric(run(model, tokens, edits=ablation_edits(
          model, w, mode=mode, eps=eps, mean_z=mean_z))))
  return {"base": base, "ablated": out, "delta": out - base}
