"""nalaformer (arXiv 2506.21137): the norm-aware feature maps and normalised linear attention
against a per-step loop; the query norm is not cancelled by the normaliser; module decoding."""

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core.mechanisms.nalaformer import nalaformer_attention
from _linear_helpers import B, D, H, T, check_module
from attnlab.core.linear import linear_attention
from numeric_checks import assert_close, check, rand


def psi(x, p):
  u = x / np.sqrt(np.sum(x * x) + 1e-6)
  return np.concatenate([np.maximum(u, 0) ** p, np.maximum(-u, 0) ** p])


def naive(q, k, v, lam=2.0, pk=2.0, eps=1e-6):
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      s, z = np.zeros((2 * q.shape[-1], v.shape[-1])), np.zeros(2 * q.shape[-1])
      for i in range(q.shape[1]):
        fk = psi(k[b, i, h], pk)
        s, z = s + np.outer(fk, v[b, i, h]), z + fk
        fq = psi(q[b, i, h], 1 + lam * np.tanh(np.linalg.norm(q[b, i, h])))
        out[b, i, h] = fq @ s / (fq @ z + eps)
  return out


def test_matches_naive():
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  check(lambda q, k, v: nalaformer_attention(q, k, v, chunk_size=3), naive, (q, k, v))


def test_query_norm_is_not_cancelled():
  """The paper's motivation: with a homogeneous kernel (ReLU) the normaliser cancels the
  query norm; the norm-aware map does not (its weights change with ||q||)."""
  q, k = rand(1, 5, 1, 4, seed=4), rand(1, 5, 1, 4, seed=5)
  v = np.eye(5, dtype=np.float32)[None, :, None]  # outputs are the weights

  @jax.jit
  def run(q):
    relu = linear_attention(jnp.maximum(q, 0), jnp.maximum(k, 0), v, normalize=True, eps=0.0,
                            causal=False)
    return relu, nalaformer_attention(q, k, v, causal=False)
  (relu_small, small), (relu_large, large) = run(q * 0.2), run(q * 5.0)
  assert_close(relu_small, relu_large, rtol=1e-5, atol=1e-6)
  assert_close(np.asarray(small).sum(-1), np.ones((1, 5, 1)), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(large) - np.asarray(small)).max() > 1e-2


def test_module_decodes_from_its_state():
  check_module("nalaformer")
