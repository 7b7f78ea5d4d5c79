"""linear_elu (Katharopoulos et al., arXiv 2006.16236): the core function against the paper's
causal recurrence (Eq. 18-20) written as a loop, the bidirectional form against Eq. 4, and the
module's recurrent decoding."""

import numpy as np

from attnlab.core.mechanisms.linear import elu_linear_attention
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import check, rand


def elu1(x):
  return np.where(x > 0, x + 1.0, np.exp(x))


def naive(q, k, v, causal=True, eps=1e-6):
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      s, z = np.zeros((q.shape[-1], v.shape[-1])), np.zeros(q.shape[-1])
      if not causal:  # Eq. 4: every key
        s = elu1(k[b, :, h]).T @ v[b, :, h]
        z = elu1(k[b, :, h]).sum(0)
      for i in range(q.shape[1]):
        if causal:
          s = s + np.outer(elu1(k[b, i, h]), v[b, i, h])
          z = z + elu1(k[b, i, h])
        out[b, i, h] = elu1(q[b, i, h]) @ s / (elu1(q[b, i, h]) @ z + eps)
  return out


def test_matches_naive_recurrence():
  q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D, seed=2), rand(B, T, H, D, seed=3)
  check(lambda q, k, v: elu_linear_attention(q, k, v, chunk_size=3), naive, (q, k, v))
  check(lambda q, k, v: elu_linear_attention(q, k, v, causal=False, chunk_size=3),
        lambda q, k, v: naive(q, k, v, causal=False), (q, k, v))


def test_module_decodes_from_its_state():
  check_module("linear_elu")


def test_module_refuses_what_linear_attention_cannot_do():
  import pytest  # pylint: disable=g-import-not-at-top
  from attnlab import masks  # pylint: disable=g-import-not-at-top
  from _linear_helpers import module, x_in  # pylint: disable=g-import-not-at-top
  mod = module("linear_elu")
  x = x_in()
  with pytest.raises(ValueError, match="takes no extra mask"):
    mod(x, mask=masks.CausalMask())
  with pytest.raises(ValueError, match="bias is not supported"):
    mod(x, bias=np.zeros((1, 4, T, T), np.float32))
  with pytest.raises(ValueError, match="does not form attention weights"):
    mod(x, return_weights=True)
  with pytest.raises(ValueError, match="needs a cache"):
    mod(x, decode=True)
  with pytest.raises(ValueError, match="form must be one of"):
    module("linear_elu", form="fast")
  with pytest.raises(ValueError, match="head_mask must have shape"):
    mod(x, head_mask=np.ones((3,), np.float32))
