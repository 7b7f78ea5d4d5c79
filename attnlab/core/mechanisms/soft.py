"""SOFT: softmax-free attention with a Gaussian kernel and a Nystrom low-rank approximation.

Paper: "SOFT: Softmax-free Transformer with Linear Complexity" (Lu, Yao, Zhang, Zhu, Xu, Gao,
Xiang, Xiang & Zhang; NeurIPS 2021, arXiv 2110.11945), Eq. 3-9 and Algorithm 1::

    S_ij = exp(-||q_i - k_j||^2 / (2 sqrt(d)))          (Q = K: one shared projection)
    S ~= P(Q, L) P(L, L)^+ P(L, K),  O = S V             (L: m landmarks)
    A^+ by Newton: A_0 = A^T / (||A||_1 ||A||_inf),  A_{k+1} = 2 A_k - A_k A A_k

This is linear attention with ``phi_q(q) = P(q, L) P(L, L)^+`` and ``phi_k(k) = P(k, L)``
(``m`` features, no normaliser), run through ``attnlab.core.linear``. The pseudo-inverse has
a ``custom_vjp`` (``newton_pinv``): the backward uses the closed form ``dA = -A^+T G A^+T``
(exact for the invertible kernel matrix) instead of differentiating the iterations, as the
authors do. Departures: bidirectional calls take the paper's landmarks (means of ``m``
consecutive segments of Q); a causal model cannot (they would read the future), so causal
calls need ``landmarks`` given (the module learns them per head) -- the decode state is then
``[B, H, m, Dv]``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry
from attnlab.core.linear import linear_attention

Array = jax.Array


def _newton(a: Array, iters: int) -> Array:
  at = jnp.swapaxes(a, -1, -2)
  n1 = jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)[..., None, None]
  ninf = jnp.max(jnp.sum(jnp.abs(a), axis=-1), axis=-1)[..., None, None]
  x = at / (n1 * ninf)
  for _ in range(iters):
    x = 2.0 * x - x @ a @ x
  return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def newton_pinv(a: Array, iters: int = 20) -> Array:
  """Moore-Penrose inverse of ``a [..., m, m]`` by ``iters`` Newton iterations."""
  return _newton(a, iters)


def _pinv_fwd(a, iters):
  x = _newton(a, iters)
  return x, x


def _pinv_bwd(iters, x, g):
  del iters
  xt = jnp.swapaxes(x, -1, -2)
  return (-xt @ g @ xt,)


newton_pinv.defvjp(_pinv_fwd, _pinv_bwd)


def gaussian_kernel(a: Array, b: Array) -> Array:
  """``exp(-||a_i - b_j||^2 / (2 sqrt(d)))``: ``a [..., n, d]``, ``b [..., m, d]`` ->
  ``[..., n, m]``."""
  d = a.shape[-1]
  sq = (jnp.sum(a * a, -1)[..., :, None] + jnp.sum(b * b, -1)[..., None, :]
        - 2.0 * jnp.einsum("...nd,...md->...nm", a, b))
  return jnp.exp(-jnp.maximum(sq, 0.0) / (2.0 * d ** 0.5))


def segment_landmarks(q: Array, m: int) -> Array:
  """Means of ``m`` consecutive segments of ``q [B, T, H, D]`` -> ``[B, H, m, D]``."""
  t = q.shape[1]
  seg = (jnp.arange(t) * m) // t                                    # [T] in 0..m-1
  onehot = jax.nn.one_hot(seg, m, dtype=jnp.float32)               # [T, m]
  sums = jnp.einsum("bthd,tm->bhmd", q, onehot)
  return sums / jnp.sum(onehot, 0)[None, None, :, None]


def soft_attention(q: Array, v: Array, *, landmarks: Array | None = None,
                   num_landmarks: int = 16, newton_iters: int = 20, causal: bool = True,
                   form: str = "chunked", chunk_size: int = 64,
                   initial_state: Array | None = None, return_state: bool = False) -> Any:
  """q (= k) ``[B, T, H, D]``, v ``[B, T, H, Dv]``, ``landmarks [H, m, D]`` (required when
  causal) -> ``[B, T, H, Dv]``."""
  q = jnp.asarray(q, jnp.float32)
  if landmarks is None:
    if causal:
      raise ValueError("soft_attention: causal=True needs learned landmarks [H, m, D] "
                       "(segment means of Q would read future tokens)")
    lm = segment_landmarks(q, num_landmarks)                          # [B, H, m, D]
  else:
    lm = jnp.asarray(landmarks, jnp.float32)
    if lm.ndim != 3 or lm.shape[0] != q.shape[2] or lm.shape[2] != q.shape[3]:
      raise ValueError(f"landmarks must have shape [H, m, D]=({q.shape[2]}, m, {q.shape[3]}), "
                       f"got {lm.shape}")
    lm = lm[None]
  qh = jnp.moveaxis(q, 1, 2)                                          # [B, H, T, D]
  p_ql = gaussian_kernel(qh, lm)                                      # [B, H, T, m]
  inv = newton_pinv(gaussian_kernel(lm, lm), newton_iters)            # [B|1, H, m, m]
  phi_q = jnp.moveaxis(p_ql @ inv, 2, 1)
  phi_k = jnp.moveaxis(p_ql, 2, 1)
  return linear_attention(phi_q, phi_k, v, causal=causal, form=form, chunk_size=chunk_size,
                          initial_state=initial_state, return_state=return_state)


registry.register_mechanism(
    "soft_nystrom", kind="module",
    paper="SOFT: Softmax-free Transformer with Linear Complexity (arXiv 2110.11945)",
    description="Gaussian kernel exp(-|q-k|^2/2sqrt(d)), Nystrom with a Newton pseudo-inverse",
    complexity="O(T m d + m^3) time, O(m d) decode state (m landmarks)")
