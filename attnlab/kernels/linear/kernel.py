"""The chunk body shared by both drivers: one chunk of one (batch, head) row."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def chunk_step(a: Array, b: Array, c: Array, state: Array, log_gamma: Array | None
               ) -> tuple[Array, Array]:
  """``a, b [C, Da]``, ``c [C, Dc]``, ``state [Da, Dc]`` (float32), ``log_gamma`` scalar or
  None. Returns ``(o [C, Dc], new state)`` with
  ``o_i = sum_{j <= i in chunk} gamma^(i-j) (a_i . b_j) c_j + gamma^(i+1) a_i^T state``."""
  n = a.shape[0]
  rows = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
  s = jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32)           # [C, C]
  if log_gamma is None:
    s = jnp.where(cols <= rows, s, 0.0)
    o = jnp.dot(s, c, preferred_element_type=jnp.float32) + jnp.dot(
        a, state, preferred_element_type=jnp.float32)
    new = state + jax.lax.dot_general(b, c, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
    return o, new
  dist = (rows - cols).astype(jnp.float32)
  s = jnp.where(cols <= rows, s * jnp.exp(log_gamma * jnp.maximum(dist, 0.0)), 0.0)
  pos = jax.lax.broadcasted_iota(jnp.int32, (n, 1), 0).astype(jnp.float32)
  o = jnp.dot(s, c, preferred_element_type=jnp.float32) + jnp.dot(
      a * jnp.exp(log_gamma * (pos + 1.0)), state, preferred_element_type=jnp.float32)
  b_end = b * jnp.exp(log_gamma * (n - 1.0 - pos))
  new = jnp.exp(log_gamma * n) * state + jax.lax.dot_general(
      b_end, c, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return o, new
