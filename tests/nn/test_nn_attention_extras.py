"""MultiHeadAttention extras vs naive references: cross-attention (and its decode cache),
attention-probability dropout, qk_norm; attnlab.nn.attention_fn vs flax's default."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import masks
from attnlab.nn import attention as A

E, H, T, S, B, C = 16, 4, 6, 5, 2, 12


def kernels(mod):
  return (np.asarray(p.kernel[...], np.float64) for p in (mod.q, mod.k, mod.v, mod.o))


def rope_naive(x, pos, base=10000.0):
  d = x.shape[-1]
  ang = np.asarray(pos, np.float64)[:, None] * base ** (-2.0 * np.arange(d // 2) / d)
  c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def naive_attention(q, k, v, wo, allowed=None, mechanism="softmax", sigmoid_bias=None):
  """float64 attention of q [B,T,H,D], k/v [B,S,K,D]; returns (y, weights [B,H,T,S])."""
  rep = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  if allowed is None:
    allowed = np.ones(s.shape, bool)
  if mechanism == "softmax":
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
  else:
    p = np.where(allowed, 1 / (1 + np.exp(-(s + sigmoid_bias))), 0.0)
  o = np.einsum("bhqk,bkhd->bqhd", p, v)
  return np.einsum("bqhd,hde->bqe", o, wo), p


def inputs(seed=0):
  kx, kc = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (B, T, E)), jax.random.normal(kc, (B, S, C))


# ----------------------------------------------------------------------------------------------
# Cross-attention.


def cross_module(**kw):
  args = dict(num_kv_heads=2, context_dim=C, causal=True, position="rope", rngs=nnx.Rngs(0))
  args.update(kw)
  return A.MultiHeadAttention(E, H, **args)


def naive_cross(mod, x, ctx, allowed=None, **kw):
  wq, wk, wv, wo = kernels(mod)
  x, ctx = np.asarray(x, np.float64), np.asarray(ctx, np.float64)
  q = np.einsum("bte,ehd->bthd", x, wq)
  k = np.einsum("bse,ehd->bshd", ctx, wk)
  v = np.einsum("bse,ehd->bshd", ctx, wv)
  return naive_attention(q, k, v, wo, allowed, **kw)


def test_cross_attention_matches_naive_no_causal_no_rope():
  mod = cross_module()
  assert mod.k.kernel[...].shape == (C, 2, E // H)
  x, ctx = inputs()
  want, p = naive_cross(mod, x, ctx)
  out, w = mod(x, ctx, return_weights=True)
  chex.assert_trees_all_close(out, want, rtol=0, atol=2e-5)
  chex.assert_trees_all_close(w, p, rtol=0, atol=1e-5)
  # Context padding through the caller's mask.
  lengths = jnp.array([S, 3])
  allowed = (np.arange(S)[None, None, None, :] < np.asarray(lengths)[:, None, None, None])
  want, _ = naive_cross(mod, x, ctx, np.broadcast_to(allowed, (B, H, T, S)))
  got = mod(x, ctx, mask=masks.ValidLengthMask(kv_lengths=lengths))
  chex.assert_trees_all_close(got, want, rtol=0, atol=2e-5)


def test_cross_attention_sigmoid_uses_max_len_bias():
  mod = cross_module(mechanism="sigmoid", max_len=32, position="alibi")
  x, ctx = inputs(1)
  want, _ = naive_cross(mod, x, ctx, mechanism="sigmoid", sigmoid_bias=-math.log(32))
  chex.assert_trees_all_close(mod(x, ctx), want, rtol=0, atol=2e-5)


def test_cross_attention_decode_cache():
  mod = cross_module()
  x, ctx = inputs(2)
  want, _ = naive_cross(mod, x, ctx)
  mod.init_cache(B, 8, context_len=S)
  step = nnx.jit(lambda m, xs, c=None: m(xs, c, decode=True))
  outs = [step(mod, x[:, :2], ctx)]  # the first call projects and caches the context K/V
  for t in range(2, T):
    outs.append(step(mod, x[:, t:t + 1]))  # later calls reuse the cross cache
  chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), want, rtol=0, atol=2e-5)
  chex.assert_trees_all_close(mod.cross_key[...], mod.k(ctx), rtol=0, atol=1e-6)
  # A cross cache that was never filled yields NaN, not silent zeros.
  mod.init_cache(B, 8, context_len=S)
  assert bool(jnp.all(jnp.isnan(mod(x[:, :1], decode=True))))
  with pytest.raises(ValueError, match="does not match the cross cache"):
    mod(x[:, :1], ctx[:, :3], decode=True)


def test_cross_attention_errors():
  mod = cross_module()
  x, ctx = inputs()
  with pytest.raises(ValueError, match="pass context="):
    mod(jnp.ones((B, T, E)))
  with pytest.raises(ValueError, match="context_dim=12"):
    mod(x, jnp.ones((B, S, E)))
  with pytest.raises(ValueError, match="context_len"):
    mod(x, ctx, decode=True)  # no cross cache allocated
  self_attn = A.MultiHeadAttention(E, H, rngs=nnx.Rngs(0))  # context_dim defaults to d_model
  out = self_attn(x, x[:, :3])
  chex.assert_shape(out, (B, T, E))


# ----------------------------------------------------------------------------------------------
# Attention-probability dropout.


def test_dropout_weights_statistics_and_broadcast():
  """One-hot values expose dropout(weights): each entry is 0 or w / keep."""
  rate, d = 0.4, 16
  for broadcast in (True, False):
    mod = A.MultiHeadAttention(E, H, head_dim=d, dropout_rate=rate, broadcast_dropout=broadcast,
                               causal=True, rngs=nnx.Rngs(0, dropout=3))
    kq, kk = jax.random.split(jax.random.key(4))
    q = jax.random.normal(kq, (B, d, H, d))
    k = jax.random.normal(kk, (B, d, H, d))
    v = jnp.broadcast_to(jnp.eye(d)[None, :, None, :], (B, d, H, d))
    allowed = np.broadcast_to(np.tril(np.ones((d, d), bool)), (B, H, d, d))
    _, w = naive_attention(np.asarray(q, np.float64), np.asarray(k, np.float64),
                           np.asarray(v, np.float64), np.zeros((H, d, E)), allowed)
    out = mod.attend_with_dropout(q, k, v, mask=masks.CausalMask(), bias=None, q_offset=0,
                                  head_mask=None, return_weights=False)
    got = np.asarray(out, np.float64).transpose(0, 2, 1, 3)  # [B, H, Tq, Tk]
    dropped = (got == 0) & allowed
    kept = ~dropped & allowed
    np.testing.assert_allclose(got[kept], w[kept] / (1 - rate), rtol=1e-5)
    frac = dropped.sum() / allowed.sum()
    assert abs(frac - rate) < 0.12, frac
    if broadcast:  # one mask shared by batch and heads
      assert (dropped == dropped[:1, :1]).all()
    else:
      assert not (dropped == dropped[:1, :1]).all()


def test_dropout_determinism():
  x, _ = inputs(5)
  mod = A.MultiHeadAttention(E, H, dropout_rate=0.3, causal=True, implementation="chunked",
                             rngs=nnx.Rngs(0, dropout=1))
  wq, wk, wv, wo = kernels(mod)
  xf = np.asarray(x, np.float64)
  q, k, v = (np.einsum("bte,ehd->bthd", xf, w) for w in (wq, wk, wv))
  want, _ = naive_attention(q, k, v, wo, np.broadcast_to(np.tril(np.ones((T, T), bool)),
                                                         (B, H, T, T)))
  chex.assert_trees_all_close(mod(x), want, rtol=0, atol=2e-5)  # deterministic by default
  a, b = mod(x, deterministic=False), mod(x, deterministic=False)
  assert not np.allclose(a, want, atol=1e-3) and not np.allclose(a, b, atol=1e-3)
  # Same seed, same draws; the dropout stream does not change the parameters.
  twin = A.MultiHeadAttention(E, H, dropout_rate=0.3, causal=True, implementation="chunked",
                              rngs=nnx.Rngs(0, dropout=1))
  chex.assert_trees_all_close(twin(x, deterministic=False), a, rtol=0, atol=1e-6)
  plain = A.MultiHeadAttention(E, H, causal=True, rngs=nnx.Rngs(0, dropout=1))
  chex.assert_trees_all_close(plain.q.kernel[...], mod.q.kernel[...])
  chex.assert_trees_all_close(plain(x, deterministic=False), want, rtol=0, atol=2e-5)
  # Mean over many draws approaches the deterministic output (inverted dropout is unbiased).
  graphdef, state = nnx.split(mod)

  @jax.jit
  def draw(state, key):
    m = nnx.merge(graphdef, state)
    m.weights_dropout.rngs = nnx.RngStream(key, tag="dropout")
    return m(x, deterministic=False)

  keys = jax.random.split(jax.random.key(9), 400)
  mean = np.mean([np.asarray(draw(state, kk)) for kk in keys], axis=0)
  assert np.abs(mean - want).max() < 0.25 * np.abs(want).max()
  with pytest.raises(ValueError, match="dropout_rate"):
    A.MultiHeadAttention(E, H, dropout_rate=1.0, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------
# QK-norm.


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_qk_norm_matches_naive(kind):
  mod = A.MultiHeadAttention(E, H, num_kv_heads=2, qk_norm=kind, causal=True, position="rope",
                             rngs=nnx.Rngs(0))
  d = E // H
  keys = jax.random.split(jax.random.key(6), 4)
  mod.q_norm.scale[...] = jax.random.uniform(keys[0], (d,), minval=0.5, maxval=2.0)
  mod.k_norm.scale[...] = jax.random.uniform(keys[1], (d,), minval=0.5, maxval=2.0)
  if kind == "layernorm":
    mod.q_norm.bias[...] = 0.1 * jax.random.normal(keys[2], (d,))
    mod.k_norm.bias[...] = 0.1 * jax.random.normal(keys[3], (d,))

  def norm(z, m):
    scale = np.asarray(m.scale[...], np.float64)
    if kind == "rmsnorm":
      return z / np.sqrt((z ** 2).mean(-1, keepdims=True) + 1e-6) * scale
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return (z - mu) / np.sqrt(var + 1e-6) * scale + np.asarray(m.bias[...], np.float64)

  x, _ = inputs(7)
  wq, wk, wv, wo = kernels(mod)
  xf = np.asarray(x, np.float64)
  q = rope_naive(norm(np.einsum("bte,ehd->bthd", xf, wq), mod.q_norm), np.arange(T))
  k = rope_naive(norm(np.einsum("bte,ehd->bthd", xf, wk), mod.k_norm), np.arange(T))
  v = np.einsum("bte,ehd->bthd", xf, wv)
  want, _ = naive_attention(q, k, v, wo, np.broadcast_to(np.tril(np.ones((T, T), bool)),
                                                         (B, H, T, T)))
  chex.assert_trees_all_close(mod(x), want, rtol=0, atol=2e-5)
  mod.init_cache(B, 8)  # the cache holds normalised, rotated keys
  steps = [mod(x[:, :2], decode=True)] + [mod(x[:, t:t + 1], decode=True) for t in range(2, T)]
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), want, rtol=0, atol=2e-5)


def test_qk_norm_errors_and_default_params_unchanged():
  with pytest.raises(ValueError, match="qk_norm must be one of"):
    A.MultiHeadAttention(E, H, qk_norm="batchnorm", rngs=nnx.Rngs(0))
  a = A.MultiHeadAttention(E, H, qk_norm="rmsnorm", rngs=nnx.Rngs(0))
  b = A.MultiHeadAttention(E, H, rngs=nnx.Rngs(0))
  assert b.q_norm is None and b.weights_dropout is None
  for name in ("q", "k", "v", "o"):
    chex.assert_trees_all_equal(getattr(a, name).kernel[...], getattr(b, name).kernel[...])


# ----------------------------------------------------------------------------------------------
# attention_fn for flax.nnx.MultiHeadAttention.


def flax_pair(**kw):
  args = dict(num_heads=H, in_features=E, qkv_features=E, decode=False)
  args.update(kw)
  ref = nnx.MultiHeadAttention(**args, rngs=nnx.Rngs(0, dropout=5))
  ours = nnx.MultiHeadAttention(**args, attention_fn=A.attention_fn,
                                rngs=nnx.Rngs(0, dropout=5))
  return ref, ours


def test_attention_fn_equals_flax_default():
  assert attnlab.nn.attention_fn is A.attention_fn
  ref, ours = flax_pair()
  x, _ = inputs(8)
  chex.assert_trees_all_close(ours(x), ref(x), rtol=0, atol=1e-5)
  causal = nnx.make_causal_mask(jnp.ones((B, T)))  # float32 [B, 1, T, T]
  chex.assert_trees_all_close(ours(x, mask=causal), ref(x, mask=causal), rtol=0, atol=1e-5)
  pad = nnx.make_attention_mask(jnp.ones((B, T)), jnp.arange(T)[None].repeat(B, 0) < 4)
  chex.assert_trees_all_close(ours(x, mask=pad), ref(x, mask=pad), rtol=0, atol=1e-5)
  # Two batch dimensions, cross inputs.
  x2 = jax.random.normal(jax.random.key(9), (2, 3, T, E))
  kv = jax.random.normal(jax.random.key(10), (2, 3, S, E))
  chex.assert_trees_all_close(ours(x2, kv), ref(x2, kv), rtol=0, atol=1e-5)
  # Sown weights match.
  ours(x, mask=causal, sow_weights=True)
  ref(x, mask=causal, sow_weights=True)
  w_ours = nnx.pop(ours, nnx.Intermediate)["attention_weights"]
  w_ref = nnx.pop(ref, nnx.Intermediate)["attention_weights"]
  chex.assert_trees_all_close(w_ours, w_ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("broadcast", [True, False])
def test_attention_fn_dropout_matches_flax(broadcast):
  ref, ours = flax_pair(dropout_rate=0.3, broadcast_dropout=broadcast)
  x, _ = inputs(11)
  causal = nnx.make_causal_mask(jnp.ones((B, T)))
  a = ours(x, mask=causal, deterministic=False)
  chex.assert_trees_all_close(a, ref(x, mask=causal, deterministic=False), rtol=0, atol=1e-5)
  assert not np.allclose(a, ours(x, mask=causal, deterministic=True), atol=1e-3)


def test_attention_fn_mechanism_and_refusals():
  q = jax.random.normal(jax.random.key(12), (B, T, H, 4))
  k = jax.random.normal(jax.random.key(13), (B, S, 2, 4))
  v = jax.random.normal(jax.random.key(14), (B, S, 2, 4))
  fn = functools.partial(A.attention_fn, mechanism="sigmoid", sigmoid_bias=-1.0)
  got = fn(q, k, v)
  wo = np.eye(H * 4).reshape(H, 4, H * 4)
  want, _ = naive_attention(*(np.asarray(a, np.float64) for a in (q, k, v)), wo,
                            mechanism="sigmoid", sigmoid_bias=-1.0)
  chex.assert_trees_all_close(got.reshape(B, T, H * 4), want, rtol=0, atol=1e-5)
  ref = jax.nn.dot_product_attention(q, k, v)
  chex.assert_trees_all_close(A.attention_fn(q, k, v), ref, rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match="precision"):
    A.attention_fn(q, k, v, precision=jax.lax.Precision.HIGHEST)
  with pytest.raises(ValueError, match="differs per head"):
    A.attention_fn(q, k, v, mask=jnp.ones((B, H, T, S), bool))
  with pytest.raises(ValueError, match="dropout_rng"):
    A.attention_fn(q, k, v, dropout_rate=0.1, deterministic=False)
