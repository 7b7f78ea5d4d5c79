"""Progressive re-parameterised BatchNorm (PRepBN), foldable into an affine map for inference.

Paper: "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive
Re-parameterized Batch Normalization" (Guo, Chen, Tang, Wang; arXiv 2405.11582). LayerNorm
needs per-token statistics at inference; BatchNorm does not (its running statistics fold into an
affine map), but replacing LN by BN directly makes transformer training collapse. PRepBN
replaces LN progressively during training::

    Norm(x) = lambda * LN(x) + (1 - lambda) * RepBN(x)
    RepBN(x) = BN(x) + eta * x                          (eta a learned scalar, init 1)
    lambda = 1                                         for the first `warmup_steps` steps,
           = max(0, 1 - (s - warmup_steps) / decay_steps)   afterwards (linear decay to 0)

BN normalises each channel over the batch and token axes. At inference (running statistics
``mu, sigma^2``), RepBN is the affine map ``a * x + c`` with
``a = gamma / sqrt(sigma^2 + eps) + eta`` and ``c = beta - gamma * mu / sqrt(sigma^2 + eps)``
(``fold_repbn``), which can be merged into the following linear layer.

Departures: the step ``s`` counts *training calls* of the module (one per optimiser step
without gradient accumulation; ``grad_accum_steps`` calls per step with it), kept in a state
variable so one compilation serves the whole schedule. In evaluation we use the current
``lambda`` (the released code evaluates with RepBN alone, which is the same once ``lambda``
reaches 0). Running statistics use the biased batch variance (Flax's convention; PyTorch keeps
the unbiased one) and include padding tokens. The final norm of the model stays a LayerNorm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from attnlab.core import registry

Array = jax.Array


def prepbn_lambda(step: Any, *, warmup_steps: int, decay_steps: int) -> Array:
  """Weight of LayerNorm after ``step`` training calls: 1 during warm-up, then linear to 0."""
  s = jnp.asarray(step, jnp.float32) - float(warmup_steps)
  if decay_steps <= 0:
    return jnp.where(s < 0, 1.0, 0.0).astype(jnp.float32)
  return jnp.clip(1.0 - s / float(decay_steps), 0.0, 1.0).astype(jnp.float32)


def batch_moments(x: Array) -> tuple[Array, Array]:
  """Per-channel mean and (biased) variance over every axis but the last, float32."""
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(xf, axis=axes)
  var = jnp.mean(jnp.square(xf - mean), axis=axes)
  return mean, var


def repbn(x: Array, mean: Array, var: Array, scale: Array, bias: Array, eta: Array, *,
          eps: float = 1e-5) -> Array:
  """``RepBN(x) = scale * (x - mean) / sqrt(var + eps) + bias + eta * x`` (float32)."""
  xf = x.astype(jnp.float32)
  bn = (xf - mean) * jax.lax.rsqrt(var + eps) * scale + bias
  return bn + jnp.asarray(eta, jnp.float32) * xf


def fold_repbn(mean: Array, var: Array, scale: Array, bias: Array, eta: Array, *,
               eps: float = 1e-5) -> tuple[Array, Array]:
  """``(a, c)`` with ``RepBN(x) == a * x + c`` for fixed (running) statistics."""
  inv = scale * jax.lax.rsqrt(var + eps)
  return inv + jnp.asarray(eta, jnp.float32), bias - mean * inv


def layer_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-6) -> Array:
  """Plain LayerNorm over the last axis (float32)."""
  xf = x.astype(jnp.float32)
  mu = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
  return (xf - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def progressive_norm(ln_out: Array, bn_out: Array, lam: Array) -> Array:
  """``lam * ln_out + (1 - lam) * bn_out``."""
  lam = jnp.asarray(lam, jnp.float32)
  return lam * ln_out + (1.0 - lam) * bn_out


def update_running(running: Array, batch: Array, momentum: float) -> Array:
  """Exponential moving average ``momentum * running + (1 - momentum) * batch``."""
  return momentum * running + (1.0 - momentum) * batch


registry.register_mechanism(
    'prepbn', kind='block',
    paper='SLAB: Efficient Transformers with Simplified Linear Attention and Progressive '
          'Re-parameterized Batch Normalization (arXiv 2405.11582)',
    description='lambda LN(x) + (1 - lambda) (BN(x) + eta x), lambda 1 -> 0 linearly over '
                'prepbn.decay_steps training calls after prepbn.warmup_steps; RepBN folds to a x '
                '+ c at inference',
    complexity='O(T d) per norm; inference (lambda = 0) an affine map')
