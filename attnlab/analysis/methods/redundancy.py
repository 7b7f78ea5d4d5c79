"""Layer redundancy as input/output similarity.

"What Matters in Transformers? Not All Attention is Needed" (He et al., arXiv 2406.15786):
a sublayer whose output hidden state is nearly parallel to its input does little; its
importance is ``1 - cos(X_in, X_out)`` averaged over tokens (the paper drops the least
important attention sublayers or blocks). Computed here for the attention sublayer
(``resid_pre -> resid_mid``), the MLP (``resid_mid -> resid_post``) and the whole block
(``resid_pre -> resid_post``) from one cached pass.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from attnlab.analysis.forward import run_with_cache

PAPER = "What Matters in Transformers? Not All Attention is Needed (arXiv 2406.15786)"


def _importance(a: Any, b: Any) -> float:
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
                               + 1e-12)
  return float(jnp.mean(1.0 - cos))


def layer_redundancy(model: Any, tokens: Any) -> dict[str, np.ndarray]:
  """``{"attention": [L], "mlp": [L], "block": [L]}`` importance ``1 - cos`` (0 = the
  sublayer leaves the residual direction unchanged, i.e. redundant)."""
  _, c = run_with_cache(model, tokens, names=["resid_pre", "resid_mid", "resid_post"])
  n = model.num_layers
  out = {k: np.zeros(n, np.float32) for k in ("attention", "mlp", "block")}
  for i in range(n):
    out["attention"][i] = _importance(c[f"resid_pre.{i}"], c[f"resid_mid.{i}"])
    out["mlp"][i] = _importance(c[f"resid_mid.{i}"], c[f"resid_post.{i}"])
    out["block"][i] = _importance(c[f"resid_pre.{i}"], c[f"resid_post.{i}"])
  return out
