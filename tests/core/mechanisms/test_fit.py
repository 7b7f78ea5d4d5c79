"""FIT ("fit"): the core function against a naive numpy loop written here (each token: its
group's visible tokens and the latents of fully visible groups, one softmax), values and
gradients (central differences); no latents = group-local attention; the module's read /
global step against a naive numpy version, its causality and KV-cache decoding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.nn.mechanisms.fit import FITAttention

from numeric_checks import assert_close, check, rand


def naive_fit(q, k, v, lk, lv, gs, causal):
  b, t, h, d = q.shape
  kh = k.shape[2]
  ng, nl = lk.shape[1], lk.shape[2]
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      for i in range(t):
        keys = [k[bi, j, kv] for j in range(t) if j // gs == i // gs and (not causal or j <= i)]
        vals = [v[bi, j, kv] for j in range(t) if j // gs == i // gs and (not causal or j <= i)]
        for g in range(ng):
          if not causal or (g + 1) * gs - 1 <= i:
            keys += [lk[bi, g, n, kv] for n in range(nl)]
            vals += [lv[bi, g, n, kv] for n in range(nl)]
        s = np.array(keys) @ q[bi, i, hi] / np.sqrt(d)
        w = np.exp(s - s.max())
        out[bi, i, hi] = (w / w.sum()) @ np.array(vals)
  return out


def inputs(seed, t=12, h=2, kh=1, d=4, ng=3, nl=2):
  return [rand(2, t, h, d, seed=seed), rand(2, t, kh, d, seed=seed + 1),
          rand(2, t, kh, d, seed=seed + 2), rand(2, ng, nl, kh, d, seed=seed + 3),
          rand(2, ng, nl, kh, d, seed=seed + 4)]


@pytest.mark.parametrize("causal", [True, False])
def test_fit_core_vs_naive(causal):
  def core(q, k, v, lk, lv):
    return attnlab.attention(q, k, v, mechanism="fit", is_causal=causal, group_size=4,
                             latent_k=lk, latent_v=lv)

  check(core, lambda *a: naive_fit(*a, 4, causal), inputs(0), seeds=(11,))


def test_no_latents_is_group_local_attention():
  q, k, v, _, _ = inputs(1)
  got = attnlab.attention(q, k, v, mechanism="fit", is_causal=True, group_size=4)
  want = naive_fit(q, k, v, np.zeros((2, 0, 0, 1, 4)), np.zeros((2, 0, 0, 1, 4)), 4, True)
  assert_close(got, want)


def naive_latents(mod, k, v, causal):
  """The module's read + global step in numpy (float64), from its parameters."""
  kern = lambda m: np.asarray(m.kernel[...], np.float64)
  wq, wk, wv, wo = kern(mod.q), kern(mod.k), kern(mod.v), kern(mod.o)
  z0 = np.asarray(mod.latents[...], np.float64)
  b, t, kh, d = k.shape
  gs, nl, h = mod.group_size, mod.num_latents, mod.num_heads
  ng = t // gs

  def attn(qx, kx, vx, allowed):  # qx [n, H, D], kx [m, K, D]
    out = np.zeros(qx.shape)
    for hi in range(h):
      s = kx[:, hi // (h // kh)] @ qx[:, hi].T / np.sqrt(d)  # [m, n]
      s = np.where(allowed.T, s, -np.inf)
      w = np.exp(s - s.max(0))
      out[:, hi] = (w / w.sum(0)).T @ vx[:, hi // (h // kh)]
    return out

  lk = np.zeros((b, ng, nl, kh, d))
  lv = np.zeros_like(lk)
  for bi in range(b):
    zs = []
    for g in range(ng):
      zq = np.einsum("le,ehd->lhd", z0, wq)
      r = attn(zq, k[bi, g * gs:(g + 1) * gs], v[bi, g * gs:(g + 1) * gs],
               np.ones((nl, gs), bool))
      zs.append(z0 + np.einsum("lhd,hde->le", r, wo))
    z = np.concatenate(zs)
    gid = np.arange(ng * nl) // nl
    allowed = gid[None] <= gid[:, None] if causal else np.ones((ng * nl,) * 2, bool)
    z = z + np.einsum("lhd,hde->le", attn(np.einsum("le,ehd->lhd", z, wq),
                                          np.einsum("le,ekd->lkd", z, wk),
                                          np.einsum("le,ekd->lkd", z, wv), allowed), wo)
    lk[bi] = np.einsum("le,ekd->lkd", z, wk).reshape(ng, nl, kh, d)
    lv[bi] = np.einsum("le,ekd->lkd", z, wv).reshape(ng, nl, kh, d)
  return lk, lv


def test_module_latents_causality_and_decoding():
  mod = FITAttention(16, 2, group_size=4, num_latents=2, causal=True, rngs=nnx.Rngs(0))
  x = jnp.asarray(rand(2, 12, 16, seed=5))
  k, v = mod.k(x), mod.v(x)
  lk, lv = jax.jit(mod.latent_kv)(k, v)
  want_k, want_v = naive_latents(mod, np.float64(k), np.float64(v), True)
  assert_close(lk, want_k, rtol=1e-3, atol=1e-4)  # float32 vs float64, 3 chained matmuls
  assert_close(lv, want_v, rtol=1e-3, atol=1e-4)
  run = nnx.jit(lambda m, x: m(x))
  full = run(mod, x)
  x2 = x.at[:, 7:].add(3.0)
  chex.assert_trees_all_equal(full[:, :7], run(mod, x2)[:, :7])
  mod.init_cache(2, 12)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = jnp.concatenate([step(mod, x[:, i:i + 2]) for i in range(0, 12, 2)], axis=1)
  assert_close(got, full)
  with pytest.raises(ValueError, match="num_latents must be int>0"):
    FITAttention(16, 2, num_latents=0, rngs=nnx.Rngs(0))
