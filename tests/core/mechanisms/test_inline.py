"""inline (arXiv 2412.06590): injective linear attention (Eq. 6) with the local residual,
against the definition written as a loop over (i, j); rows sum to one; module decoding."""

import jax
import numpy as np
import pytest

from attnlab.core.mechanisms.inline import inline_attention
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import check, rand

W = 2


def naive(q, k, v, r, causal=True):
  """InL(Q_i, K_j) = q_i.k_j - (1/N) sum_s q_i.k_s + 1/N (q / sqrt(d)), + sum_m r_im v_{i-m}."""
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for i in range(q.shape[1]):
        keys = list(range(i + 1)) if causal else list(range(q.shape[1]))
        qi = q[b, i, h] / np.sqrt(q.shape[-1])
        sims = np.array([qi @ k[b, j, h] for j in keys])
        w = sims - sims.mean() + 1.0 / len(keys)
        out[b, i, h] = sum(w[n] * v[b, j, h] for n, j in enumerate(keys))
        for m in range(W):
          j = i - m if causal else i - m + W // 2
          if 0 <= j < q.shape[1]:
            out[b, i, h] += r[b, i, h, m] * v[b, j, h]
  return out


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_matches_naive(causal):
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  r = rand(B, T, H, W, seed=4)
  check(lambda q, k, v, r: inline_attention(q, k, v, local_weights=r,
                                            causal=causal, chunk_size=3),
        lambda q, k, v, r: naive(q, k, v, r, causal), (q, k, v, r))


def test_weights_sum_to_one():
  """Without the local term, constant values come back unchanged (rows sum to one)."""
  q, k = rand(B, T, H, D, seed=5, scale=3.0), rand(B, T, H, D, seed=6, scale=3.0)
  v = np.full((B, T, H, D), 2.5, np.float32)
  got = jax.jit(lambda q, k, v: inline_attention(q, k, v, chunk_size=3))(q, k, v)
  np.testing.assert_allclose(got, v, rtol=1e-5)


def test_module_decodes_from_its_state():
  mod, _ = check_module("inline")
  assert mod.wr is not None
