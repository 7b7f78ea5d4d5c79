"""Feature maps phi for linear attention (applied per head over the last axis, float32).

* ``identity``: phi(x) = x (RetNet, GLA, DeltaNet use q, k as they are, after their own
  normalisation).
* ``elu1``: phi(x) = elu(x) + 1 > 0 ("Transformers are RNNs", arXiv 2006.16236).
* ``relu``: phi(x) = max(x, 0) (SLAB's simplified linear attention, arXiv 2405.11582).
* ``l2``: x / ||x|| (DeltaNet's query/key normalisation, arXiv 2406.06484).
* ``taylor``: phi(x) = [1, x sqrt(s), vec(x x^T) s / sqrt(2)] of size 1 + D + D^2, so that
  ``phi(q) . phi(k) = 1 + s q.k + (s q.k)^2 / 2`` (second-order Taylor of exp; Based,
  arXiv 2402.18668), ``s`` the logit scale.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def identity(x: Array) -> Array:
  return jnp.asarray(x, jnp.float32)


def elu1(x: Array) -> Array:
  return jax.nn.elu(jnp.asarray(x, jnp.float32)) + 1.0


def relu(x: Array) -> Array:
  return jax.nn.relu(jnp.asarray(x, jnp.float32))


def l2(x: Array, eps: float = 1e-6) -> Array:
  x = jnp.asarray(x, jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def taylor(x: Array, scale: float) -> Array:
  """``[..., D]`` -> ``[..., 1 + D + D^2]`` with ``phi(q).phi(k) = 1 + s + s^2/2``,
  ``s = scale * q.k``."""
  x = jnp.asarray(x, jnp.float32)
  d = x.shape[-1]
  outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (d * d,))
  return jnp.concatenate([jnp.ones(x.shape[:-1] + (1,), jnp.float32), x * math.sqrt(scale),
                          outer * (scale / math.sqrt(2.0))], axis=-1)


FEATURE_MAPS: dict[str, Callable[[Array], Array]] = {
    "identity": identity, "elu1": elu1, "relu": relu, "l2": l2}


def feature_map(name: str) -> Callable[[Array], Array]:
  """The feature map called ``name`` (one of ``FEATURE_MAPS``; ``taylor`` takes a scale)."""
  if name not in FEATURE_MAPS:
    raise ValueError(f"feature map must be one of {sorted(FEATURE_MAPS)}, got {name!r}")
  return FEATURE_MAPS[name]
