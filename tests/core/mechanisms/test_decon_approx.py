"""Deconstructing Attention "Approximate" ("decon_approx", 2nd-order Taylor softmax): the pure
function through ``attnlab.attention`` vs numpy float64 loops (values, gradients by central
differences), its weight floor; causal in a tiny DecoderLM."""

import math

import numpy as np

from attnlab import masks
from attnlab.core.mechanisms.decon_approx import taylor_attention

from _helpers import (SOW_WARNINGS, causal, check_decoder_is_causal_and_decodes,  # noqa: I100
                      check_deconstructed, rand)

pytestmark = SOW_WARNINGS


def naive_taylor(xp, q, k, v, allowed, scale):
  b_, tq, h, _ = q.shape
  kh = k.shape[2]
  outs, ws = [], []
  for b in range(b_):
    for hh in range(h):
      g = hh // (h // kh)
      rows, wrows = [], []
      for i in range(tq):
        fs = []
        for j in range(k.shape[1]):
          s = xp.sum(q[b, i, hh] * k[b, j, g]) * scale
          fs.append((1.0 + s + s * s / 2.0) * float(allowed[b, i, j]))
        fs = xp.stack(fs)
        wrow = fs / xp.sum(fs)
        wrows.append(wrow)
        rows.append(wrow @ v[b, :, g])
      outs.append(xp.stack(rows))
      ws.append(xp.stack(wrows))
  out = xp.stack(outs).reshape(b_, h, tq, -1).transpose(0, 2, 1, 3)
  return out, xp.stack(ws).reshape(b_, h, tq, -1)


def test_deconstructed_attention_matches_naive():
  check_deconstructed("decon_approx", naive_taylor)


def test_taylor_weight_floor():
  """Taylor: f(s) = 1 + s + s^2/2 >= 1/2, so every visible key keeps weight >= 1/(2 sum f)."""
  b, t, h, d = 1, 6, 2, 4
  q, k, v = rand(b, t, h, d, seed=4, scale=3.0), rand(b, t, h, d, seed=5, scale=3.0), rand(
      b, t, h, d, seed=6)
  _, w = taylor_attention(q, k, v, mask=masks.CausalMask(), return_weights=True)
  w = np.asarray(w)
  s = np.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
  f = np.where(causal(t)[:, None], 1 + s + s * s / 2, 0.0)
  assert (f[np.broadcast_to(causal(t)[:, None], f.shape)] >= 0.5 - 1e-6).all()
  assert (w[np.broadcast_to(causal(t)[:, None], w.shape)] > 0).all()


def test_decon_approx_decoder_is_causal():
  check_decoder_is_causal_and_decodes("decon_approx")
