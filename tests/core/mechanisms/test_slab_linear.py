"""slab_linear (arXiv 2405.11582): ReLU-kernel normalised linear attention plus a depthwise
convolution on V (Eq. 6), against a per-step loop, causal and centred; module decoding."""

import numpy as np
import pytest

from attnlab.core.mechanisms.slab_linear import slab_attention
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import check, rand

W = 3


def naive(q, k, v, kern, causal=True, eps=1e-6):
  relu = lambda x: np.maximum(x, 0)  # noqa: E731
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for i in range(q.shape[1]):
        keys = range(i + 1) if causal else range(q.shape[1])
        num = sum(relu(q[b, i, h]) @ relu(k[b, j, h]) * v[b, j, h] for j in keys)
        den = sum(relu(q[b, i, h]) @ relu(k[b, j, h]) for j in keys)
        conv = np.zeros(v.shape[-1])
        for m in range(W):
          j = i - m if causal else i - m + W // 2
          if 0 <= j < q.shape[1]:
            conv += kern[m, h] * v[b, j, h]
        out[b, i, h] = num / (den + eps) + conv
  return out


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_matches_naive(causal):
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  # Entries kept 0.05 away from ReLU's kink: central differences (eps 1e-4) straddling it
  # would not be the derivative; about half the entries are still clipped to zero.
  q, k = q + 0.05 * np.sign(q), k + 0.05 * np.sign(k)
  kern = rand(W, H, D, seed=4)
  check(lambda q, k, v, c: slab_attention(q, k, v, conv_kernel=c, causal=causal,
                                          chunk_size=3),
        lambda q, k, v, c: naive(q, k, v, c, causal), (q, k, v, kern))


def test_module_decodes_from_its_state():
  check_module("slab_linear")
