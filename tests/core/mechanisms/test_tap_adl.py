"""TAP and ADL ("tap_adl"): token-aware average pooling vs numpy float64 loops (values,
gradients by central differences) and its properties; the attention diversification loss vs
its naive formula, bounds and gradient; ``TAPAttention`` in a tiny DecoderLM (causal, the sown
weighted mean ADL) and its typed arguments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import models
from attnlab.core.mechanisms import tap_adl
from attnlab.nn.mechanisms.tap_adl import TAPAttention

from _helpers import (MIX_VOCAB, SOW_WARNINGS, assert_close, causal, check,  # noqa: I100
                      check_decoder_is_causal_and_decodes, mixer_tokens, rand, tiny_cfg)

pytestmark = SOW_WARNINGS


def naive_tap(xp, x, conv1, conv2, allowed, causal_, temperature=1.0):
  b_, t, _ = x.shape
  s_ = conv1.shape[-1]

  def nb(b, i, j):  # neighbour value or zero
    return 0 <= j < t and bool(allowed[b, i, j])

  outs = []
  for b in range(b_):
    rows = []
    h1 = []
    for i in range(t):
      acc = xp.zeros(s_)
      for o in range(3):
        j = i - o if causal_ else i + o - 1
        if nb(b, i, j):
          acc = acc + x[b, j] @ conv1[o]
      h1.append(acc)
    for i in range(t):
      acc = xp.zeros(s_)
      for o in range(3):
        j = i - o if causal_ else i + o - 1
        if nb(b, i, j):
          acc = acc + h1[j] @ conv2[o]
      logits = acc / temperature
      w = xp.exp(logits - xp.max(logits))
      w = w / xp.sum(w)
      out = w[0] * x[b, i]
      for d in range(1, s_):
        taps = (i, i - d, i - 2 * d) if causal_ else (i - d, i, i + d)
        pooled = sum(x[b, j] for j in taps if nb(b, i, j)) / 3.0 if any(
            nb(b, i, j) for j in taps) else 0.0 * x[b, i]
        out = out + w[d] * pooled
      rows.append(out)
    outs.append(xp.stack(rows))
  return xp.stack(outs)


def naive_adl(weights, threshold, valid=None):
  b_, _, tq, tk = weights.shape
  a = weights.mean(1)
  tau = threshold / tk
  total, count = 0.0, 0
  for b in range(b_):
    rows = [i for i in range(tq) if valid is None or valid[b, i]]
    anchor = np.mean([a[b, i] for i in rows], axis=0)
    anchor = anchor * (anchor > tau)
    for i in rows:
      r = a[b, i] * (a[b, i] > tau)
      total += r @ anchor / (max(np.linalg.norm(r), 1e-8) * max(np.linalg.norm(anchor), 1e-8))
      count += 1
  return total / count


# ---------------------------------------------------------------------------------------------
# Pure functions.


@pytest.mark.parametrize("causal_", [True, False])
def test_tap_matches_naive(causal_):
  b, t, e, s = 2, 7, 3, 3
  x = rand(b, t, e, seed=1)
  c1, c2 = rand(3, e, s, seed=2), rand(3, s, s, seed=3)
  seg = np.array([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
  allowed = seg[:, :, None] == seg[:, None, :]
  if causal_:
    allowed = allowed & causal(t, b)
  check(lambda *a: tap_adl.token_aware_average_pool(*a, causal=causal_, allowed=allowed,
                                                    temperature=0.7),
        lambda *a: naive_tap(np, *a, allowed, causal_, 0.7), (x, c1, c2))


def test_tap_properties():
  b, t, e, s = 1, 8, 3, 4
  x = rand(b, t, e, seed=1)
  c1, c2 = rand(3, e, s, seed=2), rand(3, s, s, seed=3)
  # Causal: no future leakage.
  x2 = x.copy()
  x2[:, 5] += 2.0
  y, y2 = (tap_adl.token_aware_average_pool(z, c1, c2, causal=True) for z in (x, x2))
  assert_close(y[:, :5], y2[:, :5], rtol=0, atol=0)
  # Scale weights are a distribution; one scale (dilation 0) is the identity.
  _, w = tap_adl.token_aware_average_pool(x, c1, c2, causal=True, return_scale_weights=True)
  assert_close(np.asarray(w).sum(-1), np.ones((b, t)), rtol=1e-6)
  ident = tap_adl.token_aware_average_pool(x, c1[..., :1], c2[:, :1, :1], causal=True)
  assert_close(ident, x, rtol=1e-6, atol=1e-6)


def test_adl_matches_naive_formula_and_bounds():
  b, h, t = 2, 3, 6
  logits = rand(b, h, t, t, seed=1, scale=2.0)
  w = np.asarray(jax.nn.softmax(jnp.where(causal(t)[:, None], logits, -1e9), -1))
  for thr in (0.0, 4.0):
    got = tap_adl.attention_diversification_loss(w, threshold=thr)
    assert_close(got, naive_adl(w.astype(np.float64), thr), rtol=1e-5, atol=1e-6)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  assert_close(tap_adl.attention_diversification_loss(w, query_valid=valid),
               naive_adl(w.astype(np.float64), 2.0, valid), rtol=1e-5, atol=1e-6)
  # Mean over layers; range [0, 1] for non-negative weights.
  w2 = np.asarray(jax.nn.softmax(rand(b, h, t, t, seed=2), -1))
  both = tap_adl.attention_diversification_loss([w, w2])
  assert_close(both, (naive_adl(w.astype(np.float64), 2.0) + naive_adl(
      w2.astype(np.float64), 2.0)) / 2, rtol=1e-5)
  assert 0.0 <= float(both) <= 1.0
  # Every row identical (full overfocusing on the same tokens): ADL = 1, its maximum.
  same = np.zeros((1, 1, 4, 4), np.float32)
  same[..., 0] = 0.9
  same[..., 1] = 0.1
  assert_close(tap_adl.attention_diversification_loss(same, threshold=0.0), 1.0)
  # Each row on its own token: every row is at cosine 1/2 from the uniform anchor.
  eye = np.eye(4, dtype=np.float32)[None, None]
  assert float(tap_adl.attention_diversification_loss(eye, threshold=0.0)) == pytest.approx(0.5)
  # Gradient of the loss w.r.t. the weights equals the naive jnp formula's.
  g = jax.grad(lambda w: tap_adl.attention_diversification_loss(w, threshold=1.0))(w)

  def naive_jnp(w):
    a = w.mean(1)
    anchor = a.mean(1, keepdims=True)
    tau = 1.0 / t
    ah, nh = a * (a > tau), anchor * (anchor > tau)
    cos = (ah * nh).sum(-1) / (jnp.maximum(jnp.linalg.norm(ah, axis=-1), 1e-8)
                               * jnp.maximum(jnp.linalg.norm(nh, axis=-1), 1e-8))
    return cos.mean()

  assert_close(g, jax.grad(naive_jnp)(w), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Module and model.


def test_tap_adl_decoder_is_causal():
  check_decoder_is_causal_and_decodes("tap_adl")


def test_tap_adl_sows_weighted_mean_adl():
  cfg = tiny_cfg("tap_adl")
  cfg.attention.kwargs = {"adl_weight": 0.5, "adl_threshold": 1.0, "num_scales": 3}
  model = models.build_model(cfg, vocab_size=MIX_VOCAB, rngs=nnx.Rngs(5))
  toks = mixer_tokens(4)
  (_, weights), inter = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(
      x, record_weights_layers=[0, 1]))(model, toks)
  sown = [float(v) for v in jax.tree.leaves(inter)]
  assert len(sown) == 2
  want = 0.5 * float(tap_adl.attention_diversification_loss([weights[0], weights[1]],
                                                            threshold=1.0))
  assert sum(sown) == pytest.approx(want, rel=1e-5)
  # No sowing when adl_weight == 0 (shapes only).
  cfg.attention.kwargs = {"adl_weight": 0.0}
  model0 = nnx.eval_shape(lambda: models.build_model(cfg, vocab_size=MIX_VOCAB,
                                                     rngs=nnx.Rngs(5)))
  graphdef, state = nnx.split(model0)
  _, inter0 = jax.eval_shape(
      lambda st, x: nnx.capture(nnx.merge(graphdef, st), nnx.Intermediate)(x), state, toks)
  assert not jax.tree.leaves(inter0)


def test_tap_adl_module_typed_arguments():
  mod = TAPAttention(16, 2, num_scales=3, adl_weight=0.0, causal=True, rngs=nnx.Rngs(0))
  chex.assert_shape(mod.conv1[...], (3, 16, 3))
  with pytest.raises(ValueError, match="num_scales"):
    TAPAttention(16, 2, num_scales=0, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError):
    TAPAttention(16, 2, mechanism="softmax", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="decode"):
    mod(jnp.ones((1, 4, 16)), decode=True)
