"""Axial attention ("axial"): both implementations against a naive numpy loop written here
(a query attends to the cells of its line along the axis), values and gradients (central
differences), 2D and 3D, causal and not; a 1D grid is dense attention; the module cycles the
axis by layer and matches the core function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.nn.mechanisms.axial import AxialAttention

from numeric_checks import assert_close, check, rand


def naive_axial(q, k, v, grid, axis, causal=False):
  """Loops over queries and keys; numpy float64."""
  b, t, h, d = q.shape
  kh = k.shape[2]
  axis %= len(grid)
  coords = [np.unravel_index(i, grid) for i in range(t)]
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      for i in range(t):
        keys = [j for j in range(t)
                if all(coords[j][a] == coords[i][a] for a in range(len(grid)) if a != axis)
                and (not causal or j <= i)]
        s = np.array([q[bi, i, hi] @ k[bi, j, kv] for j in keys]) / np.sqrt(d)
        w = np.exp(s - s.max())
        out[bi, i, hi] = (w / w.sum()) @ v[bi, keys, kv]
  return out


def inputs(seed, t=24, h=2, kh=1, d=4):
  return [rand(2, t, h, d, seed=seed), rand(2, t, kh, d, seed=seed + 1),
          rand(2, t, kh, d, seed=seed + 2)]


@pytest.mark.parametrize("impl", ["chunked", pytest.param("xla", marks=pytest.mark.slow)])
@pytest.mark.parametrize("grid,axis,causal", [((4, 6), -1, True), ((4, 6), 0, False),
                                              ((2, 3, 4), 1, True)])
def test_axial_vs_naive(impl, grid, axis, causal):
  def core(q, k, v):
    return attnlab.attention(q, k, v, mechanism="axial", implementation=impl,
                             is_causal=causal, grid_shape=grid, axis=axis)

  check(core, lambda q, k, v: naive_axial(q, k, v, grid, axis, causal), inputs(0),
        seeds=(11,))


def test_1d_grid_is_dense_attention():
  q, k, v = inputs(1)
  got = jax.jit(lambda q, k, v: attnlab.attention(q, k, v, mechanism="axial",
                                                  implementation="chunked", is_causal=True))(
      q, k, v)
  want = attnlab.attention(q, k, v, is_causal=True, implementation="xla")
  assert_close(got, want)


def test_bad_arguments():
  q, k, v = inputs(0)
  with pytest.raises(ValueError, match="axis must be an int"):
    attnlab.attention(q, k, v, mechanism="axial", grid_shape=(4, 6), axis=2)
  with pytest.raises(ValueError, match="does not lay out"):
    attnlab.attention(q, k, v, mechanism="axial", grid_shape=(5, 6))
  with pytest.raises(ValueError, match="axis must be None or an int"):
    AxialAttention(8, 2, grid_shape=(4, 6), axis=3, rngs=nnx.Rngs(0))


def test_module_cycles_the_axis_and_matches_core():
  mods = [AxialAttention(16, 2, grid_shape=(-1, 4), layer_index=i, causal=True,
                         rngs=nnx.Rngs(0)) for i in range(3)]
  assert [m.axis for m in mods] == [0, 1, 0]
  x = jnp.asarray(rand(1, 16, 16, seed=7))
  m = mods[1]
  core = attnlab.attention(m.q(x), m.k(x), m.v(x), mechanism="axial", is_causal=True,
                           grid_shape=(4, 4), axis=1)
  assert_close(nnx.jit(lambda m, x: m(x))(m, x), m.o(core))
