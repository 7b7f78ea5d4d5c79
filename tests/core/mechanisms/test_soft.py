"""soft_nystrom (SOFT, arXiv 2110.11945): the Newton pseudo-inverse and its custom_vjp
against numpy's inverse, the Nystrom attention against its matrix definition, module decoding."""

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core.mechanisms.soft import newton_pinv, soft_attention
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import assert_close, check, rand

M = 3


def kern(a, b):
  return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * np.sqrt(a.shape[-1])))


def naive(q, v, lm, causal=True):
  """O_i = sum_j [P(q_i, L) P(L, L)^-1 P(L, q_j)] v_j over visible j (per-step sum)."""
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      inv = np.linalg.inv(kern(lm[h], lm[h]))
      for i in range(q.shape[1]):
        for j in range(i + 1 if causal else q.shape[1]):
          w = kern(q[b, i, h][None], lm[h]) @ inv @ kern(lm[h], q[b, j, h][None])
          out[b, i, h] += w[0, 0] * v[b, j, h]
  return out


def test_newton_pinv_and_its_gradient():
  """Newton's iterations converge to the inverse; the custom_vjp is d(A^-1) = -A^-T G A^-T."""
  a = rand(4, 4, seed=1)
  a = a @ a.T + 4 * np.eye(4, dtype=np.float32)
  g = rand(4, 4, seed=2)
  value, grad = jax.jit(lambda a: (newton_pinv(a, 30), jax.grad(
      lambda a: jnp.sum(newton_pinv(a, 30) * g))(a)))(jnp.asarray(a))
  inv = np.linalg.inv(a.astype(np.float64))
  assert_close(value, inv, rtol=1e-4, atol=1e-5)
  assert_close(grad, -inv.T @ g @ inv.T, rtol=1e-3, atol=1e-5)


def test_matches_naive():
  q, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=3)
  lm = rand(H, M, D, seed=4)  # well-separated landmarks: P(L, L) well conditioned
  check(lambda q, v, lm: soft_attention(q, v, landmarks=lm, newton_iters=30, chunk_size=3),
        naive, (q, v, lm), rtol=5e-3)  # rtol: Newton-iteration pinv gradients (closed form)


def test_bidirectional_landmarks_are_segment_means():
  q, v = rand(1, 6, 1, D, seed=5), rand(1, 6, 1, D, seed=6)
  lm = q[0, :, 0].reshape(M, 2, D).mean(1)[None]
  got = jax.jit(lambda q, v: soft_attention(q, v, causal=False, num_landmarks=M,
                                            newton_iters=30))(q, v)
  assert_close(got,
               naive(q.astype(np.float64), v, lm.astype(np.float64), causal=False),
               rtol=1e-3, atol=1e-4)


def test_module_decodes_from_its_state():
  check_module("soft_nystrom", num_kv_heads=4)
