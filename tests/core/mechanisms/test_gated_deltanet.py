"""gated_deltanet (arXiv 2412.06464): the gated delta rule (Eq. 10) with Mamba-2's decay
against a loop, and the module's decoding."""

import jax
import numpy as np

from attnlab.core.mechanisms.gated_deltanet import gated_delta_attention, gated_delta_log_decay
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import check, rand
from test_deltanet import naive as naive_delta

A_LOG, DT_BIAS = np.array([0.3, -0.5]), np.array([0.1, -1.0])


def naive(q, k, v, bl, al):
  """log alpha = -exp(A) softplus(a + dt_bias)."""
  log_decay = -np.exp(A_LOG) * np.log1p(np.exp(al + DT_BIAS))
  return naive_delta(q, k, v, bl, log_decay)


def test_matches_naive_recurrence():
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  bl, al = rand(B, T, H, seed=4), rand(B, T, H, seed=5)

  def core(q, k, v, bl, al):
    g = gated_delta_log_decay(al, A_LOG.astype(np.float32), DT_BIAS.astype(np.float32))
    return gated_delta_attention(q, k, v, beta=jax.nn.sigmoid(bl), log_decay=g, chunk_size=3)
  check(core, naive, (q, k, v, bl, al))


def test_module_decodes_from_its_state():
  check_module("gated_deltanet")
