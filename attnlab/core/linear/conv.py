"""Short depthwise convolutions along time with a carried history (the local terms of SLAB and
InLine): O(W) state for decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def depthwise_conv(x: Array, kernel: Array, *, causal: bool = True,
                   history: Array | None = None) -> tuple[Array, Array]:
  """``y_t = sum_m kernel[m] * x_{t - m + c}`` per channel, ``c = 0`` (causal) or ``W // 2``.

  Args:
    x: ``[B, T, *C]``; kernel: ``[W, *C]`` (or ``[B, T, W, *C']`` broadcastable: per-position
      taps, e.g. InLine's predicted residual weights).
    history: ``[B, W - 1, *C]`` inputs before ``x`` (causal only; zeros when None).

  Returns:
    ``(y [B, T, *C], new history [B, W - 1, *C])`` (float32); positions outside the
    sequence count as zero.
  """
  x = jnp.asarray(x, jnp.float32)
  kernel = jnp.asarray(kernel, jnp.float32)
  per_position = kernel.ndim == x.ndim + 1
  w = kernel.shape[2] if per_position else kernel.shape[0]
  b, t = x.shape[:2]
  if history is None:
    history = jnp.zeros((b, w - 1) + x.shape[2:], jnp.float32)
  elif not causal:
    raise ValueError("depthwise_conv: history needs causal=True")
  elif history.shape != (b, w - 1) + x.shape[2:]:
    raise ValueError(f"history must have shape {(b, w - 1) + x.shape[2:]}, got {history.shape}")
  if causal:
    xp = jnp.concatenate([jnp.asarray(history, jnp.float32), x], axis=1)
  else:
    left = w - 1 - w // 2  # tap m reads x_{t - m + W // 2}
    xp = jnp.pad(x, ((0, 0), (left, w // 2)) + ((0, 0),) * (x.ndim - 2))
  y = jnp.zeros_like(x)
  for m in range(w):  # tap m reads x_{t - m} (causal); W is small
    shifted = jax.lax.dynamic_slice_in_dim(xp, w - 1 - m, t, axis=1)
    tap = kernel[:, :, m] if per_position else kernel[m]
    y = y + tap * shifted
  return y, xp[:, xp.shape[1] - (w - 1):] if w > 1 else xp[:, :0]
