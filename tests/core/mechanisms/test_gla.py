"""gla (arXiv 2312.06635): gated linear attention against the paper's recurrence (Eq. 3) as a
loop with per-channel gates alpha = sigmoid(.)^(1/tau), and the module's decoding."""

import numpy as np

from attnlab.core.mechanisms.gla import gated_linear_attention, gla_log_decay
from _linear_helpers import B, D, H, T, check_module, sigmoid
from numeric_checks import check, rand


def naive(q, k, v, logits, tau=16.0):
  """S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = (q_t / sqrt(d)) S_t."""
  alpha = sigmoid(logits) ** (1.0 / tau)
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      s = np.zeros((q.shape[-1], v.shape[-1]))
      for t in range(q.shape[1]):
        s = alpha[b, t, h][:, None] * s + np.outer(k[b, t, h], v[b, t, h])
        out[b, t, h] = q[b, t, h] / np.sqrt(q.shape[-1]) @ s
  return out


def test_matches_naive_recurrence():
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  logits = rand(B, T, H, D, seed=4, scale=3.0)
  check(lambda q, k, v, a: gated_linear_attention(q, k, v, log_decay=gla_log_decay(a, 16.0),
                                                  chunk_size=3), naive, (q, k, v, logits))


def test_module_decodes_from_its_state():
  check_module("gla")
