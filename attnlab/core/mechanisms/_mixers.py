"""Pieces shared by the token mixers and pooling heads of this package (pure JAX).

``allowed`` masks are boolean ``[B|1, Tq, Tk]`` (``attnlab.masks.Mask.dense``): query/output
position ``i`` may read input position ``j``. Everything is computed in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def f32(x: Any) -> Array:
  return jnp.asarray(x, jnp.float32)


def layer_norm(x: Array, scale: Array | None, bias: Array | None, eps: float = 1e-6) -> Array:
  """LayerNorm over the last axis (biased variance, as ``nnx.LayerNorm``), float32."""
  x = f32(x)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * f32(scale)
  if bias is not None:
    y = y + f32(bias)
  return y


def check_allowed(allowed: Any, b: int, tq: int, tk: int) -> Array | None:
  """Validate a boolean ``[B|1, Tq, Tk]`` mask; returns it broadcast to ``[B, Tq, Tk]``."""
  if allowed is None:
    return None
  allowed = jnp.asarray(allowed)
  if allowed.dtype != jnp.bool_:
    raise TypeError(f"allowed must be a boolean array, got dtype {allowed.dtype}")
  if allowed.ndim != 3 or allowed.shape[0] not in (1, b) or allowed.shape[1:] != (tq, tk):
    raise ValueError(f"allowed must have shape [batch|1, {tq}, {tk}], got {allowed.shape}")
  return jnp.broadcast_to(allowed, (b, tq, tk))


def check_valid(valid: Any, b: int, t: int) -> Array | None:
  """Validate ``valid [B, T]`` (nonzero / True = real token); returns bool or None."""
  if valid is None:
    return None
  valid = jnp.asarray(valid)
  if valid.shape != (b, t):
    raise ValueError(f"valid must have shape [batch, length]=({b}, {t}), got {valid.shape}")
  return valid if valid.dtype == jnp.bool_ else valid != 0


def shift_tokens(x: Array, m: int, allowed: Array | None) -> Array:
  """``y[:, i] = x[:, i - m]`` where ``0 <= i - m < T`` and ``allowed[:, i, i - m]``, else 0.

  ``x [B, T, C]``; ``m`` a static int (``m > 0`` reads to the left, ``m < 0`` to the right).
  """
  b, t, _ = x.shape
  if abs(m) >= t:
    return jnp.zeros_like(x)
  if m == 0:
    y = x
  elif m > 0:
    y = jnp.pad(x[:, : t - m], ((0, 0), (m, 0), (0, 0)))
  else:
    y = jnp.pad(x[:, -m:], ((0, 0), (0, -m), (0, 0)))
  if allowed is None:
    return y
  diag = jnp.diagonal(allowed, offset=-m, axis1=-2, axis2=-1)  # [B, T - |m|]
  if m > 0:
    ok = jnp.pad(diag, ((0, 0), (m, 0)))
  elif m < 0:
    ok = jnp.pad(diag, ((0, 0), (0, -m)))
  else:
    ok = diag
  return jnp.where(ok[..., None], y, 0.0)


def masked_softmax(logits: Array, allowed: Array | None, axis: int = -1) -> Array:
  """Float32 softmax over ``axis``; fully masked slices give zeros."""
  logits = f32(logits)
  if allowed is None:
    return jax.nn.softmax(logits, axis=axis)
  neg = jnp.finfo(jnp.float32).min
  s = jnp.where(allowed, logits, neg)
  p = jnp.where(allowed, jnp.exp(s - jnp.max(s, axis=axis, keepdims=True)), 0.0)
  denom = jnp.sum(p, axis=axis, keepdims=True)
  return p / jnp.where(denom == 0.0, 1.0, denom)
