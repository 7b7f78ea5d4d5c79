"""Pure block-level functions (attnlab.core.mechanisms_blocks) vs naive NumPy formulas, with
gradients, plus properties the papers state or the math guarantees."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab.core import mechanisms_blocks as mb

RTOL, ATOL = 1e-5, 1e-5


def rnd(seed, shape, scale=1.0):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float64) * scale


def softmax_rows(s):
  p = np.exp(s - s.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Catalogue.


def test_block_entries_listed_with_complete_overrides():
  names = attnlab.list_mechanisms("block")
  for name in ("interleave", "echoatt", "layernorm_scaling", "prepbn", "attention_drop",
               "first_router", "wide_deep"):
    assert name in names
    m = attnlab.get_mechanism(name)
    assert m.kind == "block" and m.paper and "arXiv" in m.paper and m.config
    assert all(k.startswith("model.") for k in m.config)
    with pytest.raises(ValueError, match="block-level mechanism"):
      attnlab.attention(jnp.ones((1, 2, 1, 4)), jnp.ones((1, 2, 1, 4)), jnp.ones((1, 2, 1, 4)),
                        mechanism=name)


# ---------------------------------------------------------------------------------------------
# EchoAtt.


def naive_echo(xp, w, v, head_mask=None):
  """out[b, i, h] = sum_j w[b, h, i, j] v[b, j, h // g]."""
  h, kh = w.shape[1], v.shape[2]
  vv = xp.repeat(v, h // kh, axis=2)
  out = xp.einsum("bhij,bjhd->bihd", w, vv)
  if head_mask is not None:
    out = out * head_mask[None, None, :, None]
  return out


@pytest.mark.parametrize("h, kh", [(4, 2), (4, 1)])
def test_echo_attention_matches_naive_with_grads(h, kh):
  b, t, d = 2, 5, 3
  w = softmax_rows(rnd(0, (b, h, t, t)) + np.triu(np.full((t, t), -1e9), 1))
  v = rnd(1, (b, t, kh, d))
  hm = np.array([1.0, 0.0, 0.5, 2.0][:h])
  got = mb.echo_attention(jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32),
                          head_mask=jnp.asarray(hm, jnp.float32))
  np.testing.assert_allclose(got, naive_echo(np, w, v, hm), rtol=RTOL, atol=ATOL)
  loss = lambda fn: lambda w_, v_: jnp.sum(jnp.sin(fn(w_, v_)))
  args = (jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32))
  g = jax.grad(loss(lambda a, c: mb.echo_attention(a, c)), argnums=(0, 1))(*args)
  g_ref = jax.grad(loss(lambda a, c: naive_echo(jnp, a, c)), argnums=(0, 1))(*args)
  for a, c in zip(g, g_ref):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_echo_output_is_convex_combination_of_own_values():
  """Rows of the anchor's weights sum to 1: each output lies within the range of V_own; a
  one-hot row copies one value (the sharing layer 'attends' like the anchor)."""
  b, h, t, d = 1, 2, 4, 3
  w = softmax_rows(rnd(2, (b, h, t, t)))
  v = rnd(3, (b, t, h, d))
  out = np.asarray(mb.echo_attention(jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32)))
  assert np.all(out <= v.max(1, keepdims=True) + 1e-5)
  assert np.all(out >= v.min(1, keepdims=True) - 1e-5)
  onehot = np.zeros((b, h, t, t))
  onehot[..., 2] = 1.0
  out = mb.echo_attention(jnp.asarray(onehot, jnp.float32), jnp.asarray(v, jnp.float32))
  np.testing.assert_allclose(out, np.broadcast_to(v[:, 2:3], out.shape), atol=1e-6)


def test_echo_sources_validation():
  assert mb.echo_sources((0,), (1, 2), 4) == {1: 0, 2: 0}
  assert mb.echo_sources((0, 1), (2, 3), 4) == {2: 0, 3: 1}
  assert mb.echo_sources((), (), 4) == {}
  for anchors, sharing, match in [((1,), (1,), "before"), ((2,), (1,), "before"),
                                  ((0, 1), (1, 2), "both an anchor"),
                                  ((0, 0), (1,), "one entry per"), ((0,), (4,), r"\[0, 4\)"),
                                  ((0,), (1, 1), "duplicates"), ((0,), (), "without")]:
    with pytest.raises(ValueError, match=match):
      mb.echo_sources(anchors, sharing, 4)


# ---------------------------------------------------------------------------------------------
# LayerNorm Scaling (Curse of Depth).


def naive_scaled_norm(x, scale, bias, layer, eps, rms):
  if rms:
    y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
  else:
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
  y = y * scale + (0.0 if bias is None else bias)
  return y / math.sqrt(layer + 1)


@pytest.mark.parametrize("rms, layer", [(False, 3), (True, 0)])
def test_scaled_norm_matches_naive_with_grads(rms, layer):
  x, scale, bias = rnd(0, (2, 3, 8), 3.0), 1 + rnd(1, (8,), 0.1), None if rms else rnd(2, (8,))
  got = mb.scaled_layer_norm(jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32),
                             None if bias is None else jnp.asarray(bias, jnp.float32),
                             layer_index=layer, eps=1e-6, rms=rms)
  np.testing.assert_allclose(got, naive_scaled_norm(x, scale, bias, layer, 1e-6, rms),
                             rtol=1e-5, atol=1e-5)

  def f(fn):
    return lambda xx, s: jnp.sum(jnp.cos(fn(xx, s)) * jnp.arange(8.0))

  def ref(xx, s):
    if rms:
      y = xx * jax.lax.rsqrt(jnp.mean(xx * xx, -1, keepdims=True) + 1e-6)
    else:
      mu = jnp.mean(xx, -1, keepdims=True)
      y = (xx - mu) * jax.lax.rsqrt(jnp.mean((xx - mu) ** 2, -1, keepdims=True) + 1e-6)
    return y * s / jnp.sqrt(layer + 1.0)

  mine = lambda xx, s: mb.scaled_layer_norm(xx, s, None, layer_index=layer, rms=rms)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32))
  for a, b in zip(jax.grad(f(mine), (0, 1))(*args), jax.grad(f(ref), (0, 1))(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_scaled_norm_output_variance_is_one_over_depth():
  """At init (scale 1, bias 0) LN output has unit per-token variance, so the scaled output's
  variance is 1/l: the paper's mechanism for damping the residual-variance growth."""
  x = jnp.asarray(rnd(4, (4, 6, 64), 5.0), jnp.float32)
  for layer in range(5):
    y = mb.scaled_layer_norm(x, jnp.ones(64), jnp.zeros(64), layer_index=layer)
    np.testing.assert_allclose(jnp.var(y, axis=-1), 1.0 / (layer + 1), rtol=1e-3)
  assert mb.depth_scale(3) == 0.5
  with pytest.raises(ValueError, match="layer_index"):
    mb.depth_scale(-1)


# ---------------------------------------------------------------------------------------------
# Progressive RepBN (SLAB).


def test_prepbn_lambda_schedule():
  lam = lambda s: float(mb.prepbn_lambda(s, warmup_steps=2, decay_steps=4))
  assert [lam(s) for s in range(0, 8)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
  assert float(mb.prepbn_lambda(5, warmup_steps=0, decay_steps=0)) == 0.0


def naive_repbn(x, mean, var, g, b, eta, eps):
  return g * (x - mean) / np.sqrt(var + eps) + b + eta * x


def test_repbn_and_fold_match_naive_with_grads():
  x = rnd(0, (3, 4, 6), 2.0) + 1.0
  mean, var = x.reshape(-1, 6).mean(0), x.reshape(-1, 6).var(0)
  g, b, eta = 1 + rnd(1, (6,), 0.2), rnd(2, (6,), 0.2), 0.7
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  m, v = mb.batch_moments(f32(x))
  np.testing.assert_allclose(m, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v, var, rtol=1e-4, atol=1e-5)
  got = mb.repbn(f32(x), m, v, f32(g), f32(b), eta, eps=1e-5)
  want = naive_repbn(x, mean, var, g, b, eta, 1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  a, c = mb.fold_repbn(f32(mean), f32(var), f32(g), f32(b), eta, eps=1e-5)
  np.testing.assert_allclose(f32(x) * a + c, want, rtol=1e-4, atol=1e-4)
  # Gradients through batch statistics: ours vs a direct jnp transcription.

  def ours(xx, gg):
    mm, vv = mb.batch_moments(xx)
    return jnp.sum(jnp.tanh(mb.progressive_norm(mb.layer_norm(xx, gg, 0.0),
                                                mb.repbn(xx, mm, vv, gg, 0.0, eta), 0.3)))

  def ref(xx, gg):
    mm = xx.mean((0, 1))
    vv = ((xx - mm) ** 2).mean((0, 1))
    bn = gg * (xx - mm) / jnp.sqrt(vv + 1e-5) + eta * xx
    mu = xx.mean(-1, keepdims=True)
    ln = gg * (xx - mu) / jnp.sqrt(((xx - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
    return jnp.sum(jnp.tanh(0.3 * ln + 0.7 * bn))

  for p, q in zip(jax.grad(ours, (0, 1))(f32(x), f32(g)), jax.grad(ref, (0, 1))(f32(x), f32(g))):
    np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-4)


def test_batchnorm_statistics_property():
  """With eta = 0 and identity affine, training-mode BN output has zero mean and unit variance
  per channel over batch and tokens; with lambda = 1 the norm is exactly LayerNorm."""
  x = jnp.asarray(rnd(5, (4, 5, 8), 3.0) + 2.0, jnp.float32)
  m, v = mb.batch_moments(x)
  bn = mb.repbn(x, m, v, jnp.ones(8), jnp.zeros(8), 0.0, eps=0.0)
  np.testing.assert_allclose(bn.mean((0, 1)), 0.0, atol=1e-5)
  np.testing.assert_allclose(bn.var((0, 1)), 1.0, rtol=1e-4)
  ln = mb.layer_norm(x, jnp.ones(8), jnp.zeros(8))
  np.testing.assert_array_equal(mb.progressive_norm(ln, bn, 1.0), ln)


# ---------------------------------------------------------------------------------------------
# Attention drop.


def test_attention_importance_matches_naive_and_properties():
  x = rnd(0, (2, 5, 8))
  y = x + rnd(1, (2, 5, 8), 0.5)
  cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
  got = mb.attention_importance(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  np.testing.assert_allclose(got, 1 - cos.mean(), rtol=1e-5)
  w = np.zeros((2, 5))
  w[0, :3] = 1.0
  got = mb.attention_importance(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                token_weights=jnp.asarray(w))
  np.testing.assert_allclose(got, 1 - cos[0, :3].mean(), rtol=1e-5)
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  # An identity sublayer (Y = X) scores 0; cosine is scale invariant; scores lie in [0, 2].
  np.testing.assert_allclose(mb.attention_importance(xj, xj), 0.0, atol=1e-6)
  np.testing.assert_allclose(mb.attention_importance(3 * xj, 3 * yj),
                             mb.attention_importance(xj, yj), rtol=1e-5)
  np.testing.assert_allclose(mb.attention_importance(xj, -xj), 2.0, rtol=1e-6)
  g = jax.grad(lambda a: mb.attention_importance(xj, a))(yj)
  g_ref = jax.grad(lambda a: 1 - jnp.mean(jnp.sum(xj * a, -1) / (
      jnp.linalg.norm(xj, axis=-1) * jnp.linalg.norm(a, axis=-1))))(yj)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_layers_to_drop_and_check():
  assert mb.layers_to_drop([0.3, 0.01, 0.2, float("nan"), 0.02], 2) == (1, 4)
  assert mb.layers_to_drop([0.3, 0.1], 0) == ()
  with pytest.raises(ValueError):
    mb.layers_to_drop([0.3, float("nan")], 2)
  assert mb.check_drop_layers((3, 1), 4) == (1, 3)
  for bad in [(4,), (1, 1), (-1,), (True,)]:
    with pytest.raises(ValueError, match="drop_attention_layers"):
      mb.check_drop_layers(bad, 4)


# ---------------------------------------------------------------------------------------------
# FiRST routing.


def test_router_probability_and_gates_match_naive_with_grads():
  x, w1, b1, w2 = rnd(0, (2, 3, 6)), rnd(1, (6, 4)), rnd(2, (4,)), rnd(3, (4,))
  b2 = 0.3
  h = np.maximum(x @ w1 + b1, 0.0)
  want = 1 / (1 + np.exp(-(h @ w2 + b2)))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  p = mb.router_probability(f32(x), f32(w1), f32(b1), f32(w2), f32(b2))
  np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
  y = rnd(4, (2, 3, 6))
  np.testing.assert_allclose(mb.gated_residual(f32(x), f32(y), p),
                             want[..., None] * y + (1 - want[..., None]) * x, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(mb.hard_gate(p, 0.5), (want >= 0.5).astype(np.float32))
  # Straight-through: hard forward value, the soft gate's gradient.
  st = mb.straight_through_gate(p, 0.5)
  np.testing.assert_allclose(st, mb.hard_gate(p, 0.5), atol=1e-6)

  def loss(gate_fn, ww):
    pp = mb.router_probability(f32(x), ww, f32(b1), f32(w2), f32(b2))
    return jnp.sum(mb.gated_residual(f32(x), f32(y), gate_fn(pp)) ** 2)

  g_st = jax.grad(lambda ww: loss(lambda q: mb.straight_through_gate(q, 0.5), ww))(f32(w1))
  hard, p0 = f32(want >= 0.5)[..., None], f32(want)[..., None]

  def ref(ww):  # forward value uses the hard gate; d gate / d w = d p / d w
    pp = jax.nn.sigmoid(jax.nn.relu(f32(x) @ ww + f32(b1)) @ f32(w2) + b2)[..., None]
    return jnp.sum((f32(x) + (hard + pp - p0) * (f32(y) - f32(x))) ** 2)

  np.testing.assert_allclose(g_st, jax.grad(ref)(f32(w1)), rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(g_st).sum()) > 0


def test_gated_residual_extremes_and_prefill_decision():
  x, y = jnp.ones((1, 2, 3)), 2 * jnp.ones((1, 2, 3))
  np.testing.assert_array_equal(mb.gated_residual(x, y, jnp.ones((1, 2))), y)
  np.testing.assert_array_equal(mb.gated_residual(x, y, jnp.zeros((1, 2))), x)
  p = jnp.array([[0.9, 0.3, 0.4], [0.2, 0.1, 0.9]])
  np.testing.assert_array_equal(mb.prefill_decision(p, 0.5), [True, False])
  np.testing.assert_allclose(mb.skip_regularizer([p, p * 0]), float(p.mean()) / 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Interleave and wide/deep.


def test_layer_mechanisms():
  assert mb.layer_mechanisms("softmax", (), 3) == ("softmax",) * 3
  assert mb.layer_mechanisms("softmax", ("softmax", "sigmoid"), 2,
                             known=["softmax", "sigmoid"]) == ("softmax", "sigmoid")
  with pytest.raises(ValueError, match="one name per layer: num_layers=3, got 2"):
    mb.layer_mechanisms("softmax", ("softmax", "sigmoid"), 3)
  with pytest.raises(ValueError, match=r"unknown mechanism\(s\) \['nope'\]; valid"):
    mb.layer_mechanisms("softmax", ("softmax", "nope"), 2, known=["softmax"])
  with pytest.raises(ValueError, match="tuple of names"):
    mb.layer_mechanisms("softmax", "softmax", 1)


def test_wide_deep_shapes_keep_total_heads():
  for total in (1, 4, 6, 12):
    shapes = mb.wide_deep_shapes(total, mb.divisor_depths(total))
    assert all(l * h == total for l, h in shapes)
    assert shapes[0] == (1, total) and shapes[-1] == (total, 1)
  with pytest.raises(ValueError, match="does not divide"):
    mb.wide_deep_shapes(6, (4,))
