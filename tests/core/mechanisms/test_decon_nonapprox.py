"""Deconstructing Attention "Non-approximate" ("decon_nonapprox", element-wise self-gating):
the pure function through ``attnlab.attention`` vs numpy float64 loops (values, gradients by
central differences), the query independence of its weights; causal in a tiny DecoderLM."""

import numpy as np
import pytest

from attnlab import masks
from attnlab.core.mechanisms.decon_nonapprox import self_gated_attention

from _helpers import (SOW_WARNINGS, assert_close, check_decoder_is_causal_and_decodes,  # noqa: I100
                      check_deconstructed, rand, silu)

pytestmark = SOW_WARNINGS


def naive_selfgate(xp, q, k, v, allowed, scale):
  b_, t, h, _ = q.shape
  kh = k.shape[2]
  outs, ws = [], []
  for b in range(b_):
    for hh in range(h):
      g = hh // (h // kh)
      s = [xp.sum(silu(xp, q[b, j, hh]) * k[b, j, g]) * scale for j in range(t)]
      rows, wrows = [], []
      for i in range(t):
        e = xp.stack([xp.exp(s[j]) * float(allowed[b, i, j]) for j in range(t)])
        wrow = e / xp.sum(e)
        wrows.append(wrow)
        rows.append(wrow @ v[b, :, g])
      outs.append(xp.stack(rows))
      ws.append(xp.stack(wrows))
  out = xp.stack(outs).reshape(b_, h, t, -1).transpose(0, 2, 1, 3)
  return out, xp.stack(ws).reshape(b_, h, t, -1)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_deconstructed_attention_matches_naive(impl):
  check_deconstructed("decon_nonapprox", naive_selfgate, impl)


def test_nonapprox_query_independence():
  """Non-approximate: query i's weights are the same per-key scores renormalised, so the ratio
  A_ij / A_ik does not depend on the query row i (for i >= j, k)."""
  b, t, h, d = 1, 6, 2, 4
  q, k, v = rand(b, t, h, d, seed=4, scale=3.0), rand(b, t, h, d, seed=5, scale=3.0), rand(
      b, t, h, d, seed=6)
  _, w = self_gated_attention(q, k, v, mask=masks.CausalMask(), return_weights=True)
  w = np.asarray(w, np.float64)
  ratio = w[..., 2:, 0] / w[..., 2:, 1]  # rows i >= 2, keys 0 and 1
  assert_close(ratio, np.broadcast_to(ratio[..., :1], ratio.shape), rtol=1e-4)
  with pytest.raises(ValueError, match="decoding"):
    self_gated_attention(q[:, :1], k, v)


def test_decon_nonapprox_decoder_is_causal():
  check_decoder_is_causal_and_decodes("decon_nonapprox")
