"""Deconstructing Attention "Approximate" ("decon_approx", 2nd-order Taylor softmax): the pure
function through ``attnlab.attention`` vs numpy float64 loops (values, gradients by central
differences), its weight floor; causal in a tiny DecoderLM."""

import math

import numpy as np
import pytest

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


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_deconstructed_attention_matches_naive(impl):
  check_deconstructed("decon_approx", naive_taylor, impl)


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


@pytest.mark.parametrize("is_causal", [True, False])
def test_linear_implementation_has_the_dense_numbers(is_causal):
  """The "linear" implementation (Taylor feature map through attnlab.core.linear) against the
  naive loops: GQA, causal (T_q = T_k) and bidirectional (T_q != T_k), values and gradients."""
  import attnlab  # pylint: disable=g-import-not-at-top
  from numeric_checks import check  # pylint: disable=g-import-not-at-top
  b, tq, h, kh, d = 2, 5, 4, 2, 3
  tk = tq if is_causal else 7
  q, k, v = rand(b, tq, h, d, seed=7), rand(b, tk, kh, d, seed=8), rand(b, tk, kh, d, seed=9)
  allowed = causal(tq, b) if is_causal else np.ones((b, tq, tk), bool)
  check(lambda q, k, v: attnlab.attention(q, k, v, mechanism="decon_approx",
                                          implementation="linear", is_causal=is_causal,
                                          chunk_size=2),
        lambda q, k, v: naive_taylor(np, q, k, v, allowed, 1 / math.sqrt(d)), (q, k, v))


def test_linear_implementation_refuses_other_masks():
  import attnlab  # pylint: disable=g-import-not-at-top
  q = rand(1, 4, 2, 3, seed=1)
  with pytest.raises(ValueError, match="only causal \\(no offset\\), valid-length and full masks"):
    attnlab.attention(q, q, q, mechanism="decon_approx", implementation="linear",
                      mask=masks.SlidingWindowMask(2))
