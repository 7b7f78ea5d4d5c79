"""Score-mechanism pure functions vs naive formulas written here (numpy float64 for values, the
same formula in jnp for gradients), plus properties the papers state or the math guarantees."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.core import mechanisms_scores as ms
from attnlab.nn.positions import apply_rope

B, TQ, TK, H, K, D = 2, 5, 7, 4, 2, 6
OFF = TK - TQ  # queries are the last TQ positions of the keys (decode-like, causal)
RTOL, ATOL = 2e-4, 2e-5


def rand(*shape, seed=0, scale=1.0):
  return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def jit_call(fn, *args, **kwargs):
  """``fn(*args, **kwargs)`` compiled as one program (eager jnp compiles op by op: slow)."""
  return jax.jit(lambda *a: fn(*a, **kwargs))(*args)


def qkv(seed=0, tq=TQ, tk=TK, h=H, kh=K, d=D):
  return rand(B, tq, h, d, seed=seed), rand(B, tk, kh, d, seed=seed + 1), rand(
      B, tk, kh, d, seed=seed + 2)


def causal_allowed(tq=TQ, tk=TK, off=OFF):
  return (np.arange(tq)[:, None] + off) >= np.arange(tk)[None, :]


# ---------------------------------------------------------------------------------------------
# Naive formulas. ``xp`` is numpy (values, float64) or jax.numpy (gradients).


def rep(xp, x, h):
  return xp.repeat(x, h // x.shape[2], axis=2)


def naive_softmax(xp, s, allowed):
  s = xp.where(allowed, s, -1e30)
  p = xp.exp(s - s.max(-1, keepdims=True)) * allowed
  den = p.sum(-1, keepdims=True)
  return p / xp.where(den == 0, 1.0, den)


def naive_out(xp, p, v, h):
  return xp.einsum("bhij,bjhd->bihd", p, rep(xp, v, h))


def naive_selective(xp, q, k, v, qt, vt, s, allowed):
  h, d = q.shape[2], q.shape[3]
  n = np.maximum(np.asarray(allowed).sum(-1), 1).astype(np.float64)  # [Tq]
  tau = qt + s[None, None, :] * xp.log(xp.asarray(n))[None, :, None]
  logits = xp.einsum("bihd,bjhd->bhij", q * tau[..., None], rep(xp, k, h)) / math.sqrt(d)
  p = naive_softmax(xp, logits, allowed)
  return naive_out(xp, p, v * vt[..., None], h)


def naive_deberta(xp, q, k, v, q_r, k_r, m, allowed, off):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  i = np.arange(tq)[:, None] + off
  j = np.arange(tk)[None, :]
  dij = np.clip(i - j + m, 0, 2 * m - 1)  # d(i, j)
  dji = np.clip(j - i + m, 0, 2 * m - 1)  # d(j, i)
  kk = rep(xp, k, h)
  c2c = xp.einsum("bihd,bjhd->bhij", q, kk)
  c2p = xp.einsum("bihd,ijhd->bhij", q, k_r[dij])
  p2c = xp.einsum("bjhd,ijhd->bhij", kk, q_r[dji])
  p = naive_softmax(xp, (c2c + c2p + p2c) / math.sqrt(3 * d), allowed)
  return naive_out(xp, p, v, h)


def naive_rcmha(xp, q, k, v, r, u, w, m, allowed, off):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  rel = np.clip(np.arange(tq)[:, None] + off - np.arange(tk)[None, :], -m, m) + m
  s = (xp.einsum("bihd,bjhd->bhij", q + u, rep(xp, k, h))
       + xp.einsum("bihd,ijhd->bhij", q + w, r[rel]))
  return naive_out(xp, naive_softmax(xp, s / math.sqrt(d), allowed), v, h)


def naive_complex(xp, q, k, v, a, b_, s, base, allowed, off):
  """Polar form, explicit angle differences per (i, j, c)."""
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  c = d // 2
  kk = rep(xp, k, h)
  rq = xp.sqrt(q[..., :c] ** 2 + q[..., c:] ** 2)
  tq_ = xp.arctan2(q[..., c:], q[..., :c])
  rk = xp.sqrt(kk[..., :c] ** 2 + kk[..., c:] ** 2)
  tk_ = xp.arctan2(kk[..., c:], kk[..., :c])
  omega = base ** (-np.arange(0, d, 2) / d)
  mn = (np.arange(tq)[:, None] + off - np.arange(tk)[None, :]).astype(np.float64)
  phase = (a[None, :, None, None, None] * (tq_.transpose(0, 2, 1, 3)[:, :, :, None, :]
                                            - tk_.transpose(0, 2, 1, 3)[:, :, None, :, :])
           + b_[None, :, None, None, None]
           + s[None, :, None, None, None] * mn[None, None, :, :, None] * omega)
  amp = rq.transpose(0, 2, 1, 3)[:, :, :, None, :] * rk.transpose(0, 2, 1, 3)[:, :, None, :, :]
  logits = (amp * xp.cos(phase)).sum(-1) / math.sqrt(d)
  return naive_out(xp, naive_softmax(xp, logits, allowed), v, h)


def naive_gpsa(xp, q, k, v, pos_w, gate, allowed, off):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  content = naive_softmax(xp, xp.einsum("bihd,bjhd->bhij", q, rep(xp, k, h)) / math.sqrt(d),
                          allowed)
  delta = (np.arange(tk)[None, :] - np.arange(tq)[:, None] - off).astype(np.float64)
  pl = pos_w[:, 0, None, None] * delta ** 2 + pos_w[:, 1, None, None] * delta
  pos = naive_softmax(xp, pl[None], allowed)
  g = 1 / (1 + xp.exp(-gate))[None, :, None, None]
  a = (1 - g) * content + g * pos
  return naive_out(xp, a / a.sum(-1, keepdims=True), v, h)


def naive_momentum(xp, q, k, v, mom, eta, allowed, off, include_current=False):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  p = naive_softmax(xp, xp.einsum("bihd,bjhd->bhij", q, rep(xp, k, h)) / math.sqrt(d), allowed)
  out = naive_out(xp, p, v, h)
  vv = rep(xp, v, h)
  ema = []
  for i in range(tq):  # loop over query rows: sum_{j < t} mom^(t - j) v_j
    t = i + off
    acc = 0.0
    for j in range(tk):
      if (j < t or (include_current and j == t)) and allowed[i, j]:
        acc = acc + mom ** (t - j) * vv[:, j]
    ema.append(acc + 0.0 * vv[:, 0])
  return out + eta * xp.stack(ema, axis=1)


def naive_random_qk(xp, q, k, v, w, allowed):
  h, d = q.shape[2], q.shape[3]
  logits = xp.einsum("bihd,hde,bjhe->bhij", q, w, rep(xp, k, h)) / math.sqrt(d)
  return naive_out(xp, naive_softmax(xp, logits, allowed), v, h)


class _Jitted:
  """``jms.f(...)``: ``ms.f`` compiled as one program with its arguments."""

  def __getattr__(self, name):
    fn = getattr(ms, name)
    return lambda *a, **kw: jit_call(fn, *a, **kw)


jms = _Jitted()


def jattn(*args, **kwargs):
  return jit_call(attnlab.attention, *args, **kwargs)


def check_grads(fn_impl, fn_naive, args, rtol=2e-3, atol=2e-4):
  """jax.grad of the pure function vs jax.grad of the jnp naive formula (same cotangent).

  Returns the pure function's output (value and VJP come from one compiled program)."""
  args = [jnp.asarray(a, jnp.float32) for a in args]
  out = jax.eval_shape(fn_impl, *args)
  ct = jnp.asarray(rand(*out.shape, seed=99))

  def value_and_vjp(fn):
    def run(*a):
      y, vjp = jax.vjp(fn, *a)
      return y, vjp(ct)
    return jax.jit(run)

  y, g1 = value_and_vjp(fn_impl)(*args)
  _, g2 = value_and_vjp(fn_naive)(*args)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    assert np.all(np.isfinite(np.asarray(a)))
  return y


def f64(*xs):
  return [np.asarray(x, np.float64) for x in xs]


def softmax_ref(q, k, v, causal_offset=None):
  """``jax.nn.dot_product_attention`` (an independent softmax attention), causal or full."""
  mask = None
  if causal_offset is not None:
    mask = jnp.asarray(causal_allowed(q.shape[1], k.shape[1], causal_offset))[None, None]
  return np.asarray(jit_call(jax.nn.dot_product_attention, jnp.asarray(q), jnp.asarray(k),
                             jnp.asarray(v), mask=mask))


CAUSAL = masks.CausalMask(OFF)


# ---------------------------------------------------------------------------------------------
# Selective attention (SSA).


def test_selective_vs_naive_and_grads():
  q, k, v = qkv(0)
  qt = 1 + 0.5 * np.tanh(rand(B, TQ, H, seed=5))
  vt = 1 + 0.5 * np.tanh(rand(B, TK, K, seed=6))
  s = np.abs(rand(H, seed=7)) * 0.3
  allowed = causal_allowed()

  def impl(q, k, v, qt, vt, s):
    return attnlab.attention(q, k, v, mechanism="selective_ssa", mask=CAUSAL, q_temperature=qt,
                             v_temperature=vt, position_strength=s)

  got = check_grads(impl, lambda *a: naive_selective(jnp, *a, allowed), [q, k, v, qt, vt, s])
  want = naive_selective(np, *f64(q, k, v, qt, vt, s), allowed)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_selective_unit_temperatures_is_softmax():
  q, k, v = qkv(1)
  got = jms.selective_attention(jnp.asarray(q), k, v, mask=CAUSAL,
                               q_temperature=jnp.ones((B, TQ, H)),
                               v_temperature=jnp.ones((B, TK, K)), position_strength=0.0)
  np.testing.assert_allclose(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)


def test_selective_temperature_controls_sparsity():
  """The paper's point: a larger query temperature gives a spikier (lower entropy) row; a zero
  value temperature removes that token's value."""
  q, k, v = qkv(2)
  ent = []
  for t in (0.5, 1.0, 2.0, 4.0):
    _, w = jms.selective_attention(q, k, v, q_temperature=jnp.full((B, TQ, H), t),
                                  return_weights=True)
    w = np.asarray(w)
    ent.append(-(w * np.log(w)).sum(-1).mean())
  assert all(a > b for a, b in zip(ent, ent[1:]))
  vt = np.ones((B, TK, K), np.float32)
  vt[:, 3] = 0.0
  v2 = v.copy()
  v2[:, 3] = 123.0  # any value: it is multiplied by 0
  a = jms.selective_attention(q, k, v, v_temperature=vt)
  b = jms.selective_attention(q, k, v2, v_temperature=vt)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_selective_position_term_counts_visible_keys():
  """tau_i = 1 + s log(n_i): with q_temperature 1 and strength s it equals the explicit
  per-row temperature 1 + s log(i + 1 + offset)."""
  q, k, v = qkv(3)
  s = 0.7
  n = np.arange(TQ) + OFF + 1
  explicit = np.broadcast_to((1 + s * np.log(n))[None, :, None], (B, TQ, H)).astype(np.float32)
  a = jms.selective_attention(q, k, v, mask=CAUSAL, position_strength=s)
  b = jms.selective_attention(q, k, v, mask=CAUSAL, q_temperature=explicit)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# DeBERTa.


def test_deberta_vs_naive_and_grads():
  m = 3
  q, k, v = qkv(10)
  q_r, k_r = rand(2 * m, H, D, seed=11), rand(2 * m, H, D, seed=12)
  allowed = causal_allowed()

  def impl(q, k, v, q_r, k_r):
    return attnlab.attention(q, k, v, mechanism="deberta", mask=masks.CausalMask(OFF),
                             q_offset=OFF, q_r=q_r, k_r=k_r, max_distance=m)

  got = check_grads(impl, lambda *a: naive_deberta(jnp, *a, m, allowed, OFF),
                    [q, k, v, q_r, k_r])
  want = naive_deberta(np, *f64(q, k, v, q_r, k_r), m, allowed, OFF)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_deberta_without_relative_terms_is_softmax():
  q, k, v = qkv(13)
  got = jms.deberta_attention(q, k, v, mask=masks.CausalMask(OFF))
  np.testing.assert_allclose(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)


def test_deberta_relative_terms_are_translation_invariant():
  """Only i - j enters the position terms: shifting every position by the same amount (q_offset
  with keys shifted alike) leaves the scores unchanged; distances beyond m are clipped."""
  m = 2
  q, k, v = qkv(14, tq=TK, tk=TK)
  q_r, k_r = rand(2 * m, H, D, seed=15), rand(2 * m, H, D, seed=16)
  a = jms.deberta_attention(q, k, v, q_r=q_r, k_r=k_r, max_distance=m)
  # Same tokens, but queries numbered from q_offset = 3 and keys padded by 3 masked slots.
  pad = np.zeros((B, 3, K, D), np.float32)
  kp, vp = np.concatenate([pad, k], 1), np.concatenate([pad, v], 1)
  allow = masks.ArrayMask(jnp.asarray(np.arange(TK + 3)[None, None, :] >= 3)
                          .repeat(TK, axis=1))
  b = jms.deberta_attention(q, kp, vp, q_r=q_r, k_r=k_r, max_distance=m, q_offset=3, mask=allow)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  idx = np.asarray(jms.relative_index(jnp.arange(6), jnp.arange(6), max_distance=m))
  assert idx.min() == 0 and idx.max() == 2 * m - 1 and idx[5, 0] == 2 * m - 1 and idx[0, 5] == 0


def test_deberta_log_buckets():
  rel = jnp.arange(-300, 301)
  bk = np.asarray(jms.log_bucket(rel, bucket_size=16, max_position=512))
  small = np.abs(np.arange(-300, 301)) <= 8
  np.testing.assert_array_equal(bk[small], np.arange(-300, 301)[small])
  assert np.all(np.diff(bk) >= 0) and bk.max() <= 15 and bk.min() >= -15
  idx = np.asarray(jms.relative_index(jnp.arange(300), jnp.arange(300), max_distance=16,
                                      log_buckets=True))
  assert idx.min() >= 0 and idx.max() <= 31


# ---------------------------------------------------------------------------------------------
# RCMHA (Transformer-XL relative terms).


def test_rcmha_vs_naive_and_grads():
  m = 3
  q, k, v = qkv(20)
  r = rand(2 * m + 1, H, D, seed=21)
  u, w = rand(H, D, seed=22), rand(H, D, seed=23)
  allowed = causal_allowed()

  def impl(q, k, v, r, u, w):
    return attnlab.attention(q, k, v, mechanism="rcmha", mask=masks.CausalMask(OFF),
                             q_offset=OFF, r=r, u=u, w=w, max_distance=m)

  got = check_grads(impl, lambda *a: naive_rcmha(jnp, *a, m, allowed, OFF),
                    [q, k, v, r, u, w])
  want = naive_rcmha(np, *f64(q, k, v, r, u, w), m, allowed, OFF)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_rcmha_constant_relative_table_is_softmax():
  """A relative table that is the same for every distance adds a per-row constant, which the
  softmax ignores: the result is softmax attention of (q + u)."""
  m = 2
  q, k, v = qkv(24)
  r = np.broadcast_to(rand(1, H, D, seed=25), (2 * m + 1, H, D))
  u = rand(H, D, seed=26)
  got = jms.rcmha_attention(q, k, v, r=r, u=u, w=u, max_distance=m, mask=masks.CausalMask(OFF),
                           q_offset=OFF)
  np.testing.assert_allclose(np.asarray(got), softmax_ref(q + u[None, None], k, v, OFF),
                             rtol=RTOL, atol=ATOL)
  plain = jms.rcmha_attention(q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF)
  np.testing.assert_allclose(np.asarray(plain), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# ComplexFormer.


def test_complexformer_vs_naive_and_grads():
  q, k, v = qkv(30)
  a = 1 + 0.2 * rand(H, seed=31)
  b_ = 0.3 * rand(H, seed=32)
  s = 1 + 0.5 * rand(H, seed=33)
  allowed = causal_allowed()

  def impl(q, k, v, a, b_, s):
    return attnlab.attention(q, k, v, mechanism="complexformer", mask=masks.CausalMask(OFF),
                             q_offset=OFF, phase_scale=a, phase_bias=b_, pos_scale=s,
                             rope_base=100.0)

  # a != 1 has a branch cut at theta = +-pi: the random inputs stay away from it almost surely.
  got = check_grads(impl, lambda *x: naive_complex(jnp, *x, 100.0, allowed, OFF),
                    [q, k, v, a, b_, s], rtol=5e-3, atol=5e-4)
  want = naive_complex(np, *f64(q, k, v, a, b_, s), 100.0, allowed, OFF)
  np.testing.assert_allclose(np.asarray(got), want, rtol=5e-4, atol=5e-5)


def test_complexformer_rope_setting_equals_rope_softmax():
  """a = 1, b = 0, s = 1 (the module's init) is softmax attention on RoPE-rotated q and k."""
  q, k, v = qkv(34)
  got = jms.complex_attention(q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF)
  qr = jit_call(apply_rope, jnp.asarray(q), jnp.arange(TQ) + OFF)
  kr = jit_call(apply_rope, jnp.asarray(k), jnp.arange(TK))
  np.testing.assert_allclose(np.asarray(got), softmax_ref(qr, kr, v, OFF), rtol=5e-4,
                             atol=5e-5)
  plain = jms.complex_attention(q, k, v, pos_scale=0.0)  # no positional phase: softmax
  np.testing.assert_allclose(np.asarray(plain), softmax_ref(q, k, v), rtol=5e-4, atol=5e-5)


def test_complexformer_zero_vectors_have_finite_grads():
  q, k, v = qkv(35)
  q[:, 0] = 0.0
  k[:, 1] = 0.0
  g = jax.jit(jax.grad(lambda q, k: jnp.sum(ms.complex_attention(q, k, v, phase_scale=1.3)),
                       (0, 1)))(jnp.asarray(q), jnp.asarray(k))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


# ---------------------------------------------------------------------------------------------
# ConViT GPSA.


def test_gpsa_vs_naive_and_grads():
  q, k, v = qkv(40)
  pos_w = rand(H, 2, seed=41) * 0.3
  gate = rand(H, seed=42)
  allowed = causal_allowed()

  def impl(q, k, v, pos_w, gate):
    return attnlab.attention(q, k, v, mechanism="gpsa", mask=masks.CausalMask(OFF),
                             q_offset=OFF, pos_weights=pos_w, gate=gate)

  got = check_grads(impl, lambda *a: naive_gpsa(jnp, *a, allowed, OFF),
                    [q, k, v, pos_w, gate])
  want = naive_gpsa(np, *f64(q, k, v, pos_w, gate), allowed, OFF)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_gpsa_gate_limits_and_locality():
  """sigmoid(lambda) -> 0: content (softmax) attention; -> 1: positional attention, which with
  the locality init peaks at offset Delta_h (causal: h tokens back)."""
  q, k, v = qkv(43)
  pos_w = jms.locality_pos_weights(-jnp.arange(H), 5.0)
  got = jms.gpsa_attention(q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF, pos_weights=pos_w,
                          gate=jnp.full((H,), -40.0))
  np.testing.assert_allclose(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)
  _, w = jms.gpsa_attention(q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF,
                           pos_weights=pos_w, gate=jnp.full((H,), 40.0), return_weights=True)
  w = np.asarray(w)
  for h in range(H):
    for i in range(TQ):
      assert w[0, h, i].argmax() == max(i + OFF - h, 0)
      assert w[0, h, i].max() > 0.9
      assert np.all(w[0, h, i, i + OFF + 1:] == 0)  # causal positional attention


# ---------------------------------------------------------------------------------------------
# Momentum attention.


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_vs_naive_and_grads(include_current):
  q, k, v = qkv(50)
  allowed = causal_allowed()

  def impl(q, k, v):
    return attnlab.attention(q, k, v, mechanism="momentum_ema", mask=masks.CausalMask(OFF),
                             q_offset=OFF, momentum=0.8, eta=0.7,
                             include_current=include_current)

  got = check_grads(impl, lambda *a: naive_momentum(jnp, *a, 0.8, 0.7, allowed, OFF,
                                                    include_current), [q, k, v])
  want = naive_momentum(np, *f64(q, k, v), 0.8, 0.7, allowed, OFF, include_current)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_momentum_special_cases():
  """eta = 0 is softmax attention; with queries that cannot discriminate keys (q = 0) and
  momentum 1, include_current, it is the running mean plus the running sum."""
  q, k, v = qkv(51)
  got = jms.momentum_attention(q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF, eta=0.0)
  np.testing.assert_allclose(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)
  z = np.zeros_like(q)
  got = jms.momentum_attention(z, k, v, mask=masks.CausalMask(OFF), q_offset=OFF, momentum=1.0,
                              include_current=True)
  vv = np.repeat(v, H // K, axis=2)
  csum = np.cumsum(vv, axis=1)[:, OFF:]
  cnt = (np.arange(TQ) + OFF + 1)[None, :, None, None]
  np.testing.assert_allclose(np.asarray(got), csum / cnt + csum, rtol=RTOL, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Random-feature attention.


def test_random_qk_vs_naive_and_frozen_matrix():
  q, k, v = qkv(60, kh=H)
  w = rand(H, D, D, seed=61) / math.sqrt(D) + 0.5 * np.eye(D)[None]
  allowed = causal_allowed()

  def impl(q, k, v):
    return attnlab.attention(q, k, v, mechanism="random_qk", mask=masks.CausalMask(OFF),
                             q_offset=OFF, qk_matrix=jnp.asarray(w, jnp.float32))

  got = check_grads(impl, lambda q, k, v: naive_random_qk(jnp, q, k, v, jnp.asarray(w), allowed),
                    [q, k, v])
  want = naive_random_qk(np, *f64(q, k, v, w), allowed)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)
  gw = jax.jit(jax.grad(lambda w: jnp.sum(ms.random_qk_attention(q, k, v, qk_matrix=w))))(
      jnp.asarray(w, jnp.float32))
  assert np.all(np.asarray(gw) == 0)  # frozen: no gradient into the random matrix
  ident = jms.random_qk_attention(q, k, v, qk_matrix=jnp.broadcast_to(jnp.eye(D), (H, D, D)),
                                 mask=masks.CausalMask(OFF), q_offset=OFF)
  np.testing.assert_allclose(np.asarray(ident), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# CRATE MSSA.


def test_crate_mssa_vs_naive_and_grads():
  w = rand(B, TK, H, D, seed=70)
  allowed = causal_allowed(TK, TK, 0)

  def naive(xp, w):
    s = xp.einsum("bihd,bjhd->bhij", w, w) / math.sqrt(D)
    return naive_out(xp, naive_softmax(xp, s, allowed), w, H)

  impl = lambda w: ms.crate_mssa(w, mask=masks.CausalMask())  # noqa: E731
  got = check_grads(impl, lambda w: naive(jnp, w), [w])
  np.testing.assert_allclose(np.asarray(got), naive(np, w.astype(np.float64)), rtol=RTOL,
                             atol=ATOL)
  # q == k: unmasked scores are symmetric, so w_ij Z_i = w_ji Z_j with Z the row normalisers.
  _, p = jattn(w, w, w, mechanism="crate", return_weights=True)
  p = np.asarray(p, np.float64)
  s = np.einsum("bihd,bjhd->bhij", w, w) / math.sqrt(D)
  z = np.exp(s).sum(-1)
  np.testing.assert_allclose(p * z[..., None], np.swapaxes(p * z[..., None], -1, -2),
                             rtol=1e-4)
  with pytest.raises(ValueError, match="same shape"):  # noqa: PT011
    jms.crate_attention(w, w[:, :, :2], w[:, :, :2])


# ---------------------------------------------------------------------------------------------
# Sigmoid attention (already in core): a property not covered by tests/core.


def test_sigmoid_weights_tend_to_half_and_bias_shifts():
  """sigmoid(q.k * scale + b): with b = 0 and vanishing logits every weight tends to 1/2 (rows
  are not normalised); with b = -log(n) and zero logits each weight is 1 / (1 + n)."""
  q, k, v = qkv(80)
  _, w = jattn(q * 1e-4, k, v, mechanism="sigmoid", sigmoid_bias=0.0,
                           implementation="xla", return_weights=True)
  np.testing.assert_allclose(np.asarray(w), 0.5, atol=1e-4)
  _, w = jattn(np.zeros_like(q), k, v, mechanism="sigmoid", implementation="xla",
                           return_weights=True)
  np.testing.assert_allclose(np.asarray(w), 1.0 / (1.0 + TK), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Catalogue.


def test_catalogue_entries_complete():
  from attnlab.core.catalogue import scores

  names = set(attnlab.list_mechanisms())
  for name, (kind, fn) in ms.MECHANISMS.items():
    assert name in names
    mech = attnlab.get_mechanism(name)
    assert mech.kind == kind and mech.kernel == "-" and "arXiv" in mech.paper
    assert mech.implementations["xla"].fn is fn
    assert mech.config["model.attention.mechanism"] == name
    assert mech.complexity.startswith("O(")
    assert mech.config == scores.ENTRIES[name]["config"]
  assert set(attnlab.list_mechanisms("module")) >= {n for n, (kd, _) in ms.MECHANISMS.items()
                                                    if kd == "module"}


def test_bad_shapes_raise():
  q, k, v = qkv(90)
  with pytest.raises(ValueError, match="q_r"):
    jms.deberta_attention(q, k, v, q_r=np.zeros((3, H, D)), max_distance=2)
  with pytest.raises(ValueError, match="max_distance"):
    jms.rcmha_attention(q, k, v, max_distance=0)
  with pytest.raises(ValueError, match="pos_weights"):
    jms.gpsa_attention(q, k, v, pos_weights=np.zeros((H, 3)), gate=np.zeros(H))
  with pytest.raises(ValueError, match="q_temperature"):
    jms.selective_attention(q, k, v, q_temperature=np.ones((B, TQ, H + 1)))
  with pytest.raises(ValueError, match="head_dim must be even"):
    jms.complex_attention(q[..., :5], k[..., :5], v)
