"""Pure functions of attnlab.core.mechanisms_mixers vs naive formulas written here (numpy
float64 loops for values; the same loops in jnp for gradients), plus properties the papers
state or the math guarantees (causality, normalisation, invariances)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import attnlab
from attnlab import masks
from attnlab.core import mechanisms_mixers as mm

RTOL, ATOL = 2e-4, 2e-5


def rand(*shape, seed=0, scale=1.0):
  return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def jit_call(fn, *args, **kwargs):
  return jax.jit(lambda *a: fn(*a, **kwargs))(*args)


def causal(t, b=1):
  return np.broadcast_to(np.tril(np.ones((t, t), bool)), (b, t, t))


def segments_allowed(seg):
  """Causal & same-segment, ``seg [B, T]``."""
  t = seg.shape[1]
  return causal(t, seg.shape[0]) & (seg[:, :, None] == seg[:, None, :])


def assert_close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                             atol=atol)


# ---------------------------------------------------------------------------------------------
# Naive building blocks (xp = numpy for values in float64, jax.numpy for gradients).


def erf(xp, x):
  return special.erf(x) if xp is np else jax.scipy.special.erf(x)


def gelu(xp, x):
  return 0.5 * x * (1.0 + erf(xp, x / math.sqrt(2.0)))


def silu(xp, x):
  return x / (1.0 + xp.exp(-x))


def ln(xp, x, s, b, eps):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / xp.sqrt(v + eps) * s + b


def f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def first(out):
  return out[0] if isinstance(out, tuple) else out


def check(core_fn, naive_fn, args, *, seeds=(11, 12), eps=1e-4, rtol=2e-3):
  """Values of ``core_fn(*args)`` (float32, one jitted value-and-grad) against
  ``naive_fn(*args)`` (numpy float64 loops), and the gradient of ``sum(out * ct)`` (``out`` the
  first output) w.r.t. every argument against central differences of the naive formula along
  random directions. Returns the core outputs."""
  base = f64(args)
  want = naive_fn(*base)
  ct = np.random.RandomState(9).standard_normal(np.shape(first(want)))

  def loss(*a):
    out = core_fn(*a)
    return jnp.sum(first(out) * ct), out

  (_, got), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))),
                                               has_aux=True))(*args)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_close(a, b)

  def naive_loss(*a):
    return float(np.sum(first(naive_fn(*a)) * ct))

  for seed in seeds:
    rng = np.random.RandomState(seed)
    dirs = jax.tree.map(lambda a: rng.standard_normal(np.shape(a)), base)
    plus = jax.tree.map(lambda a, u: a + eps * u, base, dirs)
    minus = jax.tree.map(lambda a, u: a - eps * u, base, dirs)
    numeric = (naive_loss(*plus) - naive_loss(*minus)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * u))
                   for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(dirs)))
    assert analytic == pytest.approx(numeric, rel=rtol, abs=1e-4), (seed, analytic, numeric)
  return got


# ---------------------------------------------------------------------------------------------
# NiNformer.


def ninformer_params(e, tmax, r, c, seed=0):
  shapes = {k: f(e, tmax, r, c) for k, f in mm.ninformer.PARAM_SHAPES.items()}
  return {k: rand(*s, seed=seed + i, scale=0.5) for i, (k, s) in enumerate(shapes.items())}


def naive_ninformer(xp, x, p, allowed, eps=1e-6):
  b_, t, e = x.shape
  r = p["token_w1"].shape[1]
  outs = []
  for b in range(b_):
    xb = x[b]
    z = ln(xp, xb, p["ln_token_scale"], p["ln_token_bias"], eps)
    rows = []
    for i in range(t):  # output position
      acc = p["token_b2"][i]
      for j in range(t):  # hidden position
        if not allowed[b, i, j]:
          continue
        for q in range(r):
          pre = p["token_b1"][j, q]
          for k in range(t):
            if allowed[b, j, k]:
              pre = pre + p["token_w1"][j, q, k] * z[k]
          acc = acc + p["token_w2"][i, j, q] * gelu(xp, pre)
      rows.append(acc * xp.ones(e) if np.ndim(acc) == 0 else acc)
    v = xb + xp.stack(rows)
    hc = gelu(xp, ln(xp, v, p["ln_channel_scale"], p["ln_channel_bias"], eps)
              @ p["channel_w1"] + p["channel_b1"])
    v = v + hc @ p["channel_w2"] + p["channel_b2"]
    outs.append((xb @ p["proj_w"] + p["proj_b"]) * v)
  return xp.stack(outs)


def trim(p, t):
  """The leading ``T x T`` block of the max_len-sized token weights."""
  return {k: (v[:t, :, :t] if k == "token_w1" else v[:t, :t] if k == "token_w2" else
              v[:t] if k in ("token_b1", "token_b2") else v) for k, v in p.items()}


@pytest.mark.parametrize("kind", ["causal", "segments", "full"])
def test_ninformer_matches_naive(kind):
  b, t, e, tmax, r, c = 2, 5, 4, 7, 2, 6
  x = rand(b, t, e, seed=1)
  p = ninformer_params(e, tmax, r, c, seed=3)
  if kind == "causal":
    allowed = causal(t, b)
  elif kind == "segments":
    allowed = segments_allowed(np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]))
  else:
    allowed = np.ones((b, t, t), bool)
  allowed_core = None if kind == "full" else allowed  # None: the unmasked code path
  check(lambda x, p: mm.ninformer_mixing(x, p, allowed=allowed_core),
        lambda x, p: naive_ninformer(np, x, trim(p, t), allowed), (x, p))


def test_ninformer_causal_no_future_leakage_and_prefix_consistency():
  """Output i reads inputs <= i only, so changing x_t leaves rows < t unchanged, and a prefix
  run equals the full run restricted to the prefix (the leading T x T block of max_len)."""
  b, t, e = 1, 6, 4
  p = ninformer_params(e, 8, 1, 5, seed=5)
  x = rand(b, t, e, seed=2)
  x2 = x.copy()
  x2[:, 4] += 3.0
  f = jax.jit(lambda x: mm.ninformer_mixing(x, p, allowed=causal(t)))
  y, y2 = f(x), f(x2)
  assert_close(y[:, :4], y2[:, :4], rtol=0, atol=0)
  assert np.abs(np.asarray(y[:, 4:] - y2[:, 4:])).max() > 1e-3
  y_prefix = jit_call(mm.ninformer_mixing, x[:, :3], p, allowed=causal(3))
  assert_close(y_prefix, y[:, :3], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="max_len"):
    mm.ninformer_mixing(rand(1, 9, e), p)


# ---------------------------------------------------------------------------------------------
# Deconstructing Attention: gated MLP, Taylor ("Approximate"), self-gated ("Non-approximate").


def test_gated_mlp_matches_naive_and_is_token_local():
  x = rand(2, 5, 4, seed=1)
  wg, wu, wd = rand(4, 6, seed=2), rand(4, 6, seed=3), rand(6, 4, seed=4)

  def naive(xp, x, wg, wu, wd):
    return (silu(xp, x @ wg) * (x @ wu)) @ wd

  check(mm.gated_mlp, lambda *a: naive(np, *a), (x, wg, wu, wd))
  # No token mixing: permuting the tokens permutes the outputs.
  perm = np.array([3, 0, 4, 1, 2])
  assert_close(mm.gated_mlp(x[:, perm], wg, wu, wd), mm.gated_mlp(x, wg, wu, wd)[:, perm])


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


@pytest.mark.parametrize("mechanism,naive", [("decon_approx", naive_taylor),
                                             ("decon_nonapprox", naive_selfgate)])
def test_deconstructed_attention_matches_naive(mechanism, naive):
  b, t, h, kh, d = 2, 5, 4, 2, 3
  q, k, v = rand(b, t, h, d, seed=1), rand(b, t, kh, d, seed=2), rand(b, t, kh, d, seed=3)
  seg = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]])
  allowed = segments_allowed(seg)
  mask = masks.SegmentMask(seg)
  scale = 1 / math.sqrt(d)
  _, w = check(lambda q, k, v: attnlab.attention(
      q, k, v, mechanism=mechanism, implementation="xla", mask=mask, is_causal=True,
      return_weights=True), lambda q, k, v: naive(np, q, k, v, allowed, scale), (q, k, v))
  # Rows are distributions over the visible keys.
  w = np.asarray(w)
  assert (w >= 0).all() and (w[np.broadcast_to(~allowed[:, None], w.shape)] == 0).all()
  assert_close(w.sum(-1), np.ones(w.shape[:-1]), rtol=1e-5, atol=1e-5)


def test_taylor_weight_floor_and_nonapprox_query_independence():
  """Taylor: f(s) = 1 + s + s^2/2 >= 1/2, so every visible key keeps weight >= 1/(2 sum f).
  Non-approximate: query i's weights are the same per-key scores renormalised, so the ratio
  A_ij / A_ik does not depend on the query row i (for i >= j, k)."""
  b, t, h, d = 1, 6, 2, 4
  q, k, v = rand(b, t, h, d, seed=4, scale=3.0), rand(b, t, h, d, seed=5, scale=3.0), rand(
      b, t, h, d, seed=6)
  _, w = mm.taylor_attention(q, k, v, mask=masks.CausalMask(), return_weights=True)
  w = np.asarray(w)
  s = np.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
  f = np.where(causal(t)[:, None], 1 + s + s * s / 2, 0.0)
  assert (f[np.broadcast_to(causal(t)[:, None], f.shape)] >= 0.5 - 1e-6).all()
  assert (w[np.broadcast_to(causal(t)[:, None], w.shape)] > 0).all()
  _, w = mm.self_gated_attention(q, k, v, mask=masks.CausalMask(), return_weights=True)
  w = np.asarray(w, np.float64)
  ratio = w[..., 2:, 0] / w[..., 2:, 1]  # rows i >= 2, keys 0 and 1
  assert_close(ratio, np.broadcast_to(ratio[..., :1], ratio.shape), rtol=1e-4)
  with pytest.raises(ValueError, match="decoding"):
    mm.self_gated_attention(q[:, :1], k, v)


# ---------------------------------------------------------------------------------------------
# TAP and ADL.


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


@pytest.mark.parametrize("causal_", [True, False])
def test_tap_matches_naive(causal_):
  b, t, e, s = 2, 7, 3, 3
  x = rand(b, t, e, seed=1)
  c1, c2 = rand(3, e, s, seed=2), rand(3, s, s, seed=3)
  seg = np.array([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
  allowed = seg[:, :, None] == seg[:, None, :]
  if causal_:
    allowed = allowed & causal(t, b)
  check(lambda *a: mm.token_aware_average_pool(*a, causal=causal_, allowed=allowed,
                                               temperature=0.7),
        lambda *a: naive_tap(np, *a, allowed, causal_, 0.7), (x, c1, c2))


def test_tap_properties():
  b, t, e, s = 1, 8, 3, 4
  x = rand(b, t, e, seed=1)
  c1, c2 = rand(3, e, s, seed=2), rand(3, s, s, seed=3)
  # Causal: no future leakage.
  x2 = x.copy()
  x2[:, 5] += 2.0
  y, y2 = (mm.token_aware_average_pool(z, c1, c2, causal=True) for z in (x, x2))
  assert_close(y[:, :5], y2[:, :5], rtol=0, atol=0)
  # Scale weights are a distribution; one scale (dilation 0) is the identity.
  _, w = mm.token_aware_average_pool(x, c1, c2, causal=True, return_scale_weights=True)
  assert_close(np.asarray(w).sum(-1), np.ones((b, t)), rtol=1e-6)
  ident = mm.token_aware_average_pool(x, c1[..., :1], c2[:, :1, :1], causal=True)
  assert_close(ident, x, rtol=1e-6, atol=1e-6)


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


def test_adl_matches_naive_formula_and_bounds():
  b, h, t = 2, 3, 6
  logits = rand(b, h, t, t, seed=1, scale=2.0)
  w = np.asarray(jax.nn.softmax(jnp.where(causal(t)[:, None], logits, -1e9), -1))
  for thr in (0.0, 4.0):
    got = mm.attention_diversification_loss(w, threshold=thr)
    assert_close(got, naive_adl(w.astype(np.float64), thr), rtol=1e-5, atol=1e-6)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  assert_close(mm.attention_diversification_loss(w, query_valid=valid),
               naive_adl(w.astype(np.float64), 2.0, valid), rtol=1e-5, atol=1e-6)
  # Mean over layers; range [0, 1] for non-negative weights.
  w2 = np.asarray(jax.nn.softmax(rand(b, h, t, t, seed=2), -1))
  both = mm.attention_diversification_loss([w, w2])
  assert_close(both, (naive_adl(w.astype(np.float64), 2.0) + naive_adl(
      w2.astype(np.float64), 2.0)) / 2, rtol=1e-5)
  assert 0.0 <= float(both) <= 1.0
  # Every row identical (full overfocusing on the same tokens): ADL = 1, its maximum.
  same = np.zeros((1, 1, 4, 4), np.float32)
  same[..., 0] = 0.9
  same[..., 1] = 0.1
  assert_close(mm.attention_diversification_loss(same, threshold=0.0), 1.0)
  # Each row on its own token: every row is at cosine 1/2 from the uniform anchor.
  eye = np.eye(4, dtype=np.float32)[None, None]
  assert float(mm.attention_diversification_loss(eye, threshold=0.0)) == pytest.approx(0.5)
  # Gradient of the loss w.r.t. the weights equals the naive jnp formula's.
  g = jax.grad(lambda w: mm.attention_diversification_loss(w, threshold=1.0))(w)

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
# Pooling heads.


def naive_lama(xp, h, p, q, c, valid, l2=True, eps=1e-6):
  b_, t, d = h.shape
  m = p.shape[1]
  pooled, ws = [], []
  for b in range(b_):
    idx = [i for i in range(t) if valid is None or valid[b, i]]
    cb = (sum(h[b, i] for i in idx) / len(idx)) if c is None else c
    scores = []
    for i in range(t):
      s = xp.stack([xp.tanh(xp.sum((cb @ p[:, k]) * (h[b, i] @ q[:, k]))) for k in range(m)])
      if l2:
        s = s / (xp.sqrt(xp.sum(s * s)) + eps)
      scores.append(s)
    scores = xp.stack(scores)  # [T, m]
    heads, wh = [], []
    for k in range(m):
      e = xp.stack([xp.exp(scores[i, k]) * float(i in idx) for i in range(t)])
      wk = e / xp.sum(e)
      wh.append(wk)
      heads.append(wk @ h[b])
    pooled.append(xp.concatenate(heads))
    ws.append(xp.stack(wh))
  return xp.stack(pooled), xp.stack(ws)


@pytest.mark.parametrize("context", ["learned", "mean"])
def test_lowrank_pool_matches_naive(context):
  b, t, d, m, r = 2, 5, 4, 3, 2
  h = rand(b, t, d, seed=1)
  p, q = rand(d, m, r, seed=2), rand(d, m, r, seed=3)
  c = rand(d, seed=4) if context == "learned" else None
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  args = (h, p, q) if c is None else (h, p, q, c)
  check(lambda h, p, q, c=None: mm.lowrank_multihead_pool(h, p, q, context=c, valid=valid),
        lambda h, p, q, c=None: naive_lama(np, h, p, q, c, valid), args)


def test_lowrank_pool_properties():
  b, t, d, m = 2, 6, 4, 3
  h = rand(b, t, d, seed=1)
  p, q, c = rand(d, m, 1, seed=2), rand(d, m, 1, seed=3), rand(d, seed=4)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  pooled, w = mm.lowrank_multihead_pool(h, p, q, context=c, valid=valid)
  # Each head's attention is a distribution over the real tokens.
  assert_close(np.asarray(w).sum(-1), np.ones((b, m)), rtol=1e-6)
  assert (np.asarray(w)[0, :, 4:] == 0).all()
  # Padded token states do not matter; the pooled vector ignores token order.
  h2 = h.copy()
  h2[0, 4:] = 100.0
  assert_close(mm.lowrank_multihead_pool(h2, p, q, context=c, valid=valid)[0], pooled)
  perm = np.array([2, 0, 3, 1, 4, 5])
  assert_close(mm.lowrank_multihead_pool(h[:, perm], p, q, context=c, valid=valid[:, perm])[0],
               pooled, rtol=1e-5, atol=1e-6)


def mlp_params(n_layers, d, n_lat, h, dh, f, seed=0):
  shapes = {"layer_emb": (n_layers, d), "latents": (n_lat, d), "ln_q_scale": (d,),
            "ln_q_bias": (d,), "ln_kv_scale": (d,), "ln_kv_bias": (d,), "w_q": (d, h, dh),
            "w_k": (d, h, dh), "w_v": (d, h, dh), "w_o": (h, dh, d), "ln_ff_scale": (d,),
            "ln_ff_bias": (d,), "ff_w1": (d, 2 * f), "ff_b1": (2 * f,), "ff_w2": (f, d),
            "ff_b2": (d,)}
  return {k: rand(*s, seed=seed + i, scale=0.5) for i, (k, s) in enumerate(shapes.items())}


def naive_multilayer(xp, hiddens, p, valid, summary, normalize, eps=1e-5):
  n_layers, b_, t, d = hiddens.shape
  h, dh = p["w_q"].shape[1:]
  outs = []
  for b in range(b_):
    idx = [i for i in range(t) if valid is None or valid[b, i]]
    if summary == "mean":
      s = xp.stack([sum(hiddens[l, b, i] for i in idx) / len(idx) for l in range(n_layers)])
    else:
      s = xp.stack([hiddens[l, b, max(idx)] for l in range(n_layers)])
    s = s + p["layer_emb"]
    kv = ln(xp, s, p["ln_kv_scale"], p["ln_kv_bias"], eps)
    lat = p["latents"]
    lq = ln(xp, lat, p["ln_q_scale"], p["ln_q_bias"], eps)
    rows = []
    for n in range(lat.shape[0]):
      o = 0.0
      for hh in range(h):
        qv = lq[n] @ p["w_q"][:, hh]
        logits = xp.stack([qv @ (kv[l] @ p["w_k"][:, hh]) / math.sqrt(dh)
                           for l in range(n_layers)])
        a = xp.exp(logits - xp.max(logits))
        a = a / xp.sum(a)
        ov = sum(a[l] * (kv[l] @ p["w_v"][:, hh]) for l in range(n_layers))
        o = o + ov @ p["w_o"][hh]
      x = o + lat[n]
      f = ln(xp, x, p["ln_ff_scale"], p["ln_ff_bias"], eps) @ p["ff_w1"] + p["ff_b1"]
      half = f.shape[0] // 2
      x = x + (f[:half] * gelu(xp, f[half:])) @ p["ff_w2"] + p["ff_b2"]
      rows.append(x)
    out = sum(rows) / len(rows)
    if normalize:
      out = out / xp.sqrt(xp.sum(out * out))
    outs.append(out)
  return xp.stack(outs)


@pytest.mark.parametrize("summary,normalize", [("mean", True), ("last", False)])
def test_multilayer_pool_matches_naive(summary, normalize):
  n_layers, b, t, d, n_lat, h, dh, f = 3, 2, 5, 4, 2, 2, 3, 5
  hid = rand(n_layers, b, t, d, seed=1)
  p = mlp_params(n_layers, d, n_lat, h, dh, f, seed=2)
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  got = check(lambda hid, p: mm.multilayer_trainable_pool(
      hid, p, num_heads=h, valid=valid, summary=summary, normalize=normalize),
      lambda hid, p: naive_multilayer(np, hid, p, valid, summary, normalize), (hid, p))
  if normalize:  # the paper's embedding is L2-normalised
    assert_close(np.linalg.norm(np.asarray(got), axis=-1), np.ones(b), rtol=1e-5)
