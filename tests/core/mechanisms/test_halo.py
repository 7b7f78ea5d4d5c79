"""HaloNet ("halo"): both implementations against a naive numpy loop written here (for each
query cell: its block's halo window, relative logits per axis, softmax), values and gradients
(central differences); a window covering the whole grid is dense attention (+ the relative
terms); the module against the core function; a tiny DecoderLM from the catalogue overrides."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import masks
from attnlab.nn.mechanisms.halo import HaloAttention

from numeric_checks import assert_close, check, rand


def naive_halo(q, k, v, rels, grid, b, halo, causal=False, cap=None):
  """Loops over query cells; numpy float64. rels: one [2(b+h)-1, H, D] table per axis."""
  bsz, t, h, d = q.shape
  kh = k.shape[2]
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  coords = [np.unravel_index(i, grid) for i in range(t)]
  for bi in range(bsz):
    for hi in range(h):
      kv = hi // (h // kh)
      for i in range(t):
        qc = coords[i]
        logits, vals = [], []
        for j in range(t):
          kc = coords[j]
          inside = all(qc[a] // b * b - halo <= kc[a] < qc[a] // b * b + b + halo
                       for a in range(len(grid)))
          if not inside or (causal and j > i):
            continue
          s = q[bi, i, hi] @ k[bi, j, kv]
          for a, rel in enumerate(rels):
            s += q[bi, i, hi] @ rel[kc[a] - qc[a] + b + halo - 1, hi]
          s = s / np.sqrt(d)
          logits.append(s if cap is None else cap * np.tanh(s / cap))
          vals.append(v[bi, j, kv])
        w = np.exp(np.array(logits) - max(logits))
        out[bi, i, hi] = (w / w.sum()) @ np.array(vals)
  return out


GRID, B, HALO = (6, 4), 2, 1


def halo(q, k, v, rels=None, **kw):
  """``attnlab.attention(mechanism="halo")`` jitted (eager dispatch is the slow part here)."""
  return jax.jit(lambda q, k, v, r: attnlab.attention(q, k, v, mechanism="halo", rel_tables=r,
                                                       **kw))(q, k, v, rels)


def inputs(seed, t=24, h=2, kh=1, d=4, axes=2, b=B, halo=HALO):
  rels = tuple(rand(2 * (b + halo) - 1, h, d, seed=seed + 10 + a, scale=0.5)
               for a in range(axes))
  return [rand(2, t, h, d, seed=seed), rand(2, t, kh, d, seed=seed + 1),
          rand(2, t, kh, d, seed=seed + 2), rels]


@pytest.mark.parametrize("impl", ["chunked", pytest.param("xla", marks=pytest.mark.slow)])
@pytest.mark.parametrize("causal", [False, True])
def test_halo_2d_vs_naive(impl, causal):
  def core(q, k, v, rels):
    return attnlab.attention(q, k, v, mechanism="halo", implementation=impl, is_causal=causal,
                             grid_shape=GRID, block_size=B, halo=HALO, rel_tables=rels)

  check(core, lambda q, k, v, rels: naive_halo(q, k, v, rels, GRID, B, HALO, causal),
        inputs(0), seeds=(11,))


def test_halo_1d_grid_and_inferred_axis():
  """grid_shape=None is a 1D grid; (-1, 4) infers the rows."""
  q, k, v, rels = inputs(3, axes=1)
  got = halo(q, k, v, (rand(9, 2, 4, seed=40),), implementation="chunked", block_size=3,
             halo=2)
  want = naive_halo(q, k, v, (rand(9, 2, 4, seed=40),), (24,), 3, 2)
  assert_close(got, want)
  q, k, v, rels = inputs(4)
  a = halo(q, k, v, rels, grid_shape=(-1, 4), block_size=B, halo=HALO)
  assert_close(a, naive_halo(q, k, v, rels, GRID, B, HALO))


def test_softcap_applies_to_the_relative_logits_too():
  q, k, v, rels = inputs(8)
  got = halo(q, k, v, rels, implementation="chunked", grid_shape=GRID, block_size=B, halo=HALO,
             softcap=1.5)
  assert_close(got, naive_halo(q, k, v, rels, GRID, B, HALO, cap=1.5))


def test_window_covering_the_grid_is_dense_attention():
  """halo >= grid size: every block sees every cell; without relative tables this is plain
  softmax attention."""
  q, k, v, _ = inputs(5)
  got = halo(q, k, v, implementation="chunked", grid_shape=GRID, block_size=2, halo=6)
  want = attnlab.attention(q, k, v, implementation="xla")
  assert_close(got, want)


def test_bad_arguments():
  q, k, v, rels = inputs(0)
  with pytest.raises(ValueError, match="divisible by block_size"):
    attnlab.attention(q, k, v, mechanism="halo", grid_shape=GRID, block_size=4)
  with pytest.raises(ValueError, match="does not lay out"):
    attnlab.attention(q, k, v, mechanism="halo", grid_shape=(5, 5))
  with pytest.raises(ValueError, match="rel_tables must be 2 arrays"):
    attnlab.attention(q, k, v, mechanism="halo", grid_shape=GRID, block_size=B, halo=HALO,
                      rel_tables=rels[:1])
  with pytest.raises(ValueError, match="'chunked'.*full pass"):
    attnlab.attention(q[:, :4], k, v, mechanism="halo", implementation="chunked")


@pytest.mark.slow
def test_module_matches_core_and_decodes():
  mod = HaloAttention(16, 2, block_size=2, halo=1, grid_shape=(-1, 4), causal=True,
                      rngs=nnx.Rngs(0), max_len=16)
  x = jnp.asarray(rand(1, 16, 16, seed=7))
  q, k, v = mod.q(x), mod.k(x), mod.v(x)
  core = halo(q, k, v, tuple(t[...] for t in mod.rel), is_causal=True, grid_shape=(4, 4),
              block_size=2, halo=1)
  full = nnx.jit(lambda m, x: m(x))(mod, x)
  assert_close(full, mod.o(core))
  assert len(mod.rel) == 2
  mod.init_cache(1, 16)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = jnp.concatenate([step(mod, x[:, i:i + 4]) for i in range(0, 16, 4)], axis=1)
  assert_close(got, full)
  with pytest.raises(ValueError, match="halo must be a non-negative int"):
    HaloAttention(16, 2, halo=-1, rngs=nnx.Rngs(0))


def test_mask_applies_inside_windows():
  """Keys a mask removes have no influence (valid lengths)."""
  q, k, v, rels = inputs(6)
  m = masks.ValidLengthMask(jnp.array([20, 24]))
  fn = jax.jit(lambda k, v: attnlab.attention(q, k, v, mechanism="halo", mask=m,
                                              implementation="chunked", grid_shape=GRID,
                                              block_size=B, halo=HALO, rel_tables=rels))
  k2 = k.copy()
  k2[0, 20:] += 7.0
  assert_close(fn(k, v), fn(jnp.asarray(k2), v))
