"""attnlab.kernels.linear: the Pallas chunk kernel (Triton and Mosaic TPU drivers, interpret
mode on CPU) against the pure-JAX parallel form of attnlab.core.linear and a numpy loop:
values and gradients w.r.t. q, k, v; no decay and a per-head decay; T a multiple of the chunk
or not; the normaliser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.core.linear import linear_attention
from attnlab.kernels.linear import chunk_linear_attention
from numeric_checks import assert_close, rand

B, T, H, DK, DV = 1, 21, 2, 16, 8   # T = 21: not a multiple of the chunk (8)
GAMMA = np.array([-0.1, -0.6], np.float32)


def naive(q, k, v, log_gamma):
  """o_i = sum_{j<=i} gamma_h^(i-j) (q_i . k_j) v_j, numpy float64."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  out = np.zeros(v.shape)
  for h in range(q.shape[2]):
    g = 0.0 if log_gamma is None else float(log_gamma[h])
    for i in range(q.shape[1]):
      for j in range(i + 1):
        w = np.exp(g * (i - j)) * np.einsum("bd,bd->b", q[:, i, h], k[:, j, h])
        out[:, i, h] += w[:, None] * v[:, j, h]
  return out


def value_and_grads(fn, q, k, v, ct):
  return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * ct),
                                    argnums=(0, 1, 2)))(q, k, v)


# Each driver with one decay setting by default; the other two combinations under -m slow.
@pytest.mark.parametrize("backend,decay", [
    ("triton", True), ("mosaic", False),
    pytest.param("triton", False, marks=pytest.mark.slow),
    pytest.param("mosaic", True, marks=pytest.mark.slow)])
def test_kernel_values_and_gradients(backend, decay):
  q, k, v = rand(B, T, H, DK, seed=1), rand(B, T, H, DK, seed=2), rand(B, T, H, DV, seed=3)
  ct = jnp.asarray(rand(B, T, H, DV, seed=4))
  g = GAMMA if decay else None
  kern = lambda q, k, v: chunk_linear_attention(q, k, v, log_decay=g, chunk_size=8,  # noqa
                                                backend=backend)
  ref = lambda q, k, v: linear_attention(q, k, v, decay=g, form="parallel")  # noqa: E731
  out = jax.jit(kern)(q, k, v)
  assert_close(out, naive(q, k, v, g), rtol=1e-4, atol=1e-4)
  got, want = value_and_grads(kern, q, k, v, ct), value_and_grads(ref, q, k, v, ct)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_kernel_normalised_matches_core():
  q, k = np.abs(rand(B, T, H, DK, seed=5)), np.abs(rand(B, T, H, DK, seed=6))
  v = rand(B, T, H, DV, seed=7)
  got = jax.jit(lambda q, k, v: chunk_linear_attention(q, k, v, normalize=True, chunk_size=16,
                                                       log_decay=GAMMA))(q, k, v)
  want = linear_attention(q, k, v, normalize=True, decay=GAMMA, form="recurrent")
  assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_kernel_refuses_what_it_does_not_fuse():
  q, k, v = rand(B, T, H, DK), rand(B, T, H, DK), rand(B, T, H, DV)
  with pytest.raises(ValueError, match="only a constant decay per head"):
    chunk_linear_attention(q, k, v, log_decay=np.zeros((B, T, H), np.float32))
  with pytest.raises(ValueError, match="chunk_size must be a positive multiple of 8"):
    chunk_linear_attention(q, k, v, chunk_size=5)
  with pytest.raises(ValueError, match="backend must be one of"):
    chunk_linear_attention(q, k, v, backend="cuda")
