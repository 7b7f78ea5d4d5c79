"""Attention-layer importance and dropping ("Attention Drop").

Paper: "What Matters in Transformers? Not All Attention is Needed" (He, Sun, Shen, Li;
arXiv 2406.15786). A module whose output is nearly its input is redundant. For the attention
sublayer of block ``l`` with input ``X`` (the residual stream) and output
``Y = X + Attention(LN(X))``, the importance score is::

    S_l = 1 - mean_tokens CosSim(X_t, Y_t)

computed on calibration data; the attention sublayers with the lowest scores are dropped (the
block becomes ``x + MLP(LN(x))``) in one shot. ``attention_importance`` is the score for one
layer; ``layers_to_drop`` picks the ``n`` least important. Departure: we average over the
tokens of the batch given (optionally weighted, e.g. to ignore padding) rather than over a
fixed calibration set; dropping is a config choice (``config.model.drop_attention_layers``)
that also applies when training from scratch, not only to a pre-trained model.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from attnlab.core import registry

Array = jax.Array


def token_cosine(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """Cosine similarity over the last axis: ``[..., D] x [..., D] -> [...]`` float32."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return num / jnp.maximum(den, eps)


def attention_importance(x_in: Array, x_out: Array, *, token_weights: Array | None = None
                         ) -> Array:
  """``1 - mean_t cos(x_in_t, x_out_t)`` for ``x_in, x_out [B, T, D]`` (scalar float32).

  ``token_weights [B, T]`` (e.g. 0 for padding) weight the mean.
  """
  if x_in.shape != x_out.shape:
    raise ValueError(f"x_in and x_out must have the same shape, got {x_in.shape} and "
                     f"{x_out.shape}")
  cos = token_cosine(x_in, x_out)
  if token_weights is None:
    return 1.0 - jnp.mean(cos)
  w = jnp.broadcast_to(jnp.asarray(token_weights, jnp.float32), cos.shape)
  return 1.0 - jnp.sum(cos * w) / jnp.maximum(jnp.sum(w), 1e-9)


def layers_to_drop(scores: Sequence[float] | Array, n: int) -> tuple[int, ...]:
  """Indices of the ``n`` least important layers (lowest score; NaN scores never chosen)."""
  s = np.asarray(scores, np.float64)
  if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= int(np.sum(~np.isnan(s))):
    raise ValueError(f"n must be an int in [0, number of scored layers], got {n!r}")
  order = np.argsort(np.where(np.isnan(s), np.inf, s), kind="stable")
  return tuple(sorted(int(i) for i in order[:n]))


def check_drop_layers(drop: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
  """Validate ``config.model.drop_attention_layers``; return it sorted."""
  drop = tuple(drop or ())
  for i in drop:
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers:
      raise ValueError(f"drop_attention_layers entries must be layer indices in [0, "
                       f"{num_layers}), got {drop}")
  if len(set(drop)) != len(drop):
    raise ValueError(f"drop_attention_layers has duplicates: {drop}")
  return tuple(sorted(drop))


registry.register_mechanism(
    'attention_drop', kind='block',
    paper='What Matters in Transformers? Not All Attention is Needed (arXiv 2406.15786)',
    description='importance 1 - mean_t cos(X, X + Attn(LN(X))) ranks attention sublayers '
                '(attnlab.nn.variants.attention_layer_importance); drop_attention_layers skips '
                'those sublayers, MLPs kept',
    complexity='dropped layers: no attention compute and no KV cache')
