"""retnet (arXiv 2307.08621): retention against the paper's recurrent form (Eq. 6) as a loop,
the decays, and the module's recurrent decoding."""

import numpy as np

from attnlab.core.mechanisms.retnet import retention, retnet_log_decays
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import check, rand

GAMMA = np.array([0.9, 0.5])


def naive(q, k, v):
  """S_n = gamma S_{n-1} + k_n^T v_n (k / sqrt(d)), o_n = q_n S_n."""
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      s = np.zeros((q.shape[-1], v.shape[-1]))
      for n in range(q.shape[1]):
        s = GAMMA[h] * s + np.outer(k[b, n, h] / np.sqrt(q.shape[-1]), v[b, n, h])
        out[b, n, h] = q[b, n, h] @ s
  return out


def test_matches_naive_recurrence():
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  g = np.log(GAMMA).astype(np.float32)
  check(lambda q, k, v: retention(q, k, v, log_decay=g, chunk_size=3), naive, (q, k, v))


def test_decays_follow_the_paper_range():
  g = np.exp(retnet_log_decays(8))
  np.testing.assert_allclose(g[0], 1 - 2.0 ** -5, rtol=1e-6)
  np.testing.assert_allclose(g[-1], 1 - 2.0 ** -10, rtol=1e-6)
  assert np.all(np.diff(g) > 0)


def test_module_decodes_from_its_state():
  check_module("retnet")
