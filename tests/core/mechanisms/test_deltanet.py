"""deltanet (arXiv 2406.06484): the delta rule against the paper's Eq. 1-2 as a loop (q, k =
L2Norm(SiLU(.)), q / sqrt(d)), the chunked WY form and the module's decoding."""

import jax
import numpy as np

from attnlab.core.mechanisms.deltanet import delta_attention
from _linear_helpers import B, D, H, T, check_module, sigmoid
from numeric_checks import check, rand


def qk_map(x):
  x = x * sigmoid(x)
  return x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)


def naive(q, k, v, beta_logits, log_decay=None):
  """S_t = a_t (I - beta k k^T) S_{t-1} + beta k v^T (a_t = 1 without a decay)."""
  beta = sigmoid(beta_logits)
  out = np.zeros(v.shape)
  d = q.shape[-1]
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      s = np.zeros((d, v.shape[-1]))
      for t in range(q.shape[1]):
        kt, qt = qk_map(k[b, t, h]), qk_map(q[b, t, h]) / np.sqrt(d)
        a = 1.0 if log_decay is None else np.exp(log_decay[b, t, h])
        bt = beta[b, t, h]
        s = a * (np.eye(d) - bt * np.outer(kt, kt)) @ s + bt * np.outer(kt, v[b, t, h])
        out[b, t, h] = s.T @ qt
  return out


def test_matches_naive_recurrence():
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  bl = rand(B, T, H, seed=4)
  check(lambda q, k, v, bl: delta_attention(q, k, v, beta=jax.nn.sigmoid(bl), chunk_size=3),
        naive, (q, k, v, bl))


def test_module_decodes_from_its_state():
  check_module("deltanet")
