"""BiFormer ("biformer"): both implementations against a naive numpy reference written here
(regions by loops over grid coordinates, region affinity, top-k, one softmax over the gathered
regions), values and gradients (central differences), bidirectional (the paper's region
queries) and causal (token routing over fully visible regions); top-k = all regions is dense
attention; causal routing; the 1D special case."""

import chex
import jax
import numpy as np
import pytest

import attnlab

from numeric_checks import assert_close, check, rand


def naive_regions(grid, rs):
  """Region id of every cell (loops over coordinates)."""
  t = int(np.prod(grid))
  rgrid = [g // r for g, r in zip(grid, rs)]
  out = np.zeros(t, int)
  for i in range(t):
    c = np.unravel_index(i, grid)
    out[i] = np.ravel_multi_index([c[a] // rs[a] for a in range(len(grid))], rgrid)
  return out


def naive_biformer(q, k, v, grid, rs, top_k, causal):
  b, t, h, d = q.shape
  kh = k.shape[2]
  reg = naive_regions(grid, rs)
  nr = reg.max() + 1
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      kbar = np.stack([k[bi, reg == j, kv].mean(0) for j in range(nr)])
      qbar = np.stack([q[bi, reg == j, hi].mean(0) for j in range(nr)])
      for i in range(t):
        if not causal:
          gate = kbar @ qbar[reg[i]]
          chosen = np.argsort(-gate, kind="stable")[:top_k]
        else:
          cands = [j for j in range(nr) if j != reg[i] and np.all(np.where(reg == j)[0] <= i)]
          gate = {j: kbar[j] @ q[bi, i, hi] for j in cands}
          chosen = [reg[i]] + sorted(cands, key=lambda j: -gate[j])[:top_k - 1]
        keys = [j for j in range(t) if reg[j] in chosen and (not causal or j <= i)]
        s = np.array([q[bi, i, hi] @ k[bi, j, kv] for j in keys]) / np.sqrt(d)
        w = np.exp(s - s.max())
        out[bi, i, hi] = (w / w.sum()) @ v[bi, keys, kv]
  return out


def inputs(seed, t=24, h=2, kh=1, d=4):
  return [rand(2, t, h, d, seed=seed), rand(2, t, kh, d, seed=seed + 1),
          rand(2, t, kh, d, seed=seed + 2)]


def jitted(impl, **kw):
  return jax.jit(lambda q, k, v: attnlab.attention(q, k, v, mechanism="biformer",
                                                   implementation=impl, **kw))


@pytest.mark.parametrize("impl", ["chunked", pytest.param("xla", marks=pytest.mark.slow)])
@pytest.mark.parametrize("causal", [False, True])
def test_biformer_2d_vs_naive(impl, causal):
  grid, rs = (4, 6), (2, 2)

  def core(q, k, v):
    return attnlab.attention(q, k, v, mechanism="biformer", implementation=impl,
                             is_causal=causal, grid_shape=grid, region_size=2, top_k=3)

  sel = naive_regions(grid, rs)
  assert sel.max() + 1 == 6 and np.all(np.bincount(sel) == 4)
  check(core, lambda q, k, v: naive_biformer(q, k, v, grid, rs, 3, causal), inputs(0),
        seeds=(11,))


def test_1d_special_case_vs_naive():
  q, k, v = inputs(2)
  got = jitted("chunked", is_causal=True, region_size=4, top_k=2)(q, k, v)
  assert_close(got, naive_biformer(q, k, v, (24,), (4,), 2, True))


@pytest.mark.parametrize("causal,grid,rs", [(False, (4, 6), 2), (True, None, 4)])
def test_all_regions_is_dense_attention(causal, grid, rs):
  """Keeping every region is dense attention: bidirectional on a 2D grid, causal on a 1D grid
  (with a mask, a 2D region that is only partly in the past is never a candidate, so causal
  2D top-k = all is not dense causal attention: by design, see the core docstring)."""
  q, k, v = inputs(3)
  got = jitted("chunked", is_causal=causal, grid_shape=grid, region_size=rs, top_k=6)(q, k, v)
  assert_close(got, attnlab.attention(q, k, v, is_causal=causal, implementation="xla"))


@pytest.mark.parametrize("impl", ["chunked", pytest.param("xla", marks=pytest.mark.slow)])
def test_routing_is_causal(impl):
  q, k, v = inputs(4)
  p = 13
  q2, k2, v2 = (np.concatenate([x[:, :p], x[:, p:] + 5.0], axis=1) for x in (q, k, v))
  fn = jitted(impl, is_causal=True, grid_shape=(4, 6), region_size=2, top_k=2)
  a, b = fn(q, k, v), fn(q2, k2, v2)
  chex.assert_trees_all_equal(a[:, :p], b[:, :p])


def test_bad_arguments():
  q, k, v = inputs(0)
  with pytest.raises(ValueError, match="region_size must be"):
    attnlab.attention(q, k, v, mechanism="biformer", grid_shape=(4, 6), region_size=4)
  with pytest.raises(ValueError, match="top_k must be a positive int"):
    attnlab.attention(q, k, v, mechanism="biformer", top_k=0)
  with pytest.raises(ValueError, match="full pass"):
    attnlab.attention(q[:, :8], k, v, mechanism="biformer", implementation="xla")
