"""kernels/flash/ref_reads: a score_mod's reads of captured arrays rewritten as indexed reads.

The rewrite is checked against ``jax.core.eval_jaxpr`` of the same jaxpr (plain jnp gathers)
on the index patterns score_mods use: fancy indexing by q/kv positions, ``jnp.take`` in each
gather mode (clip, fill, promise-in-bounds with negative indices wrapped by jnp), slices kept
as offset dims, scalar (dynamic_slice) reads, and a read inside a nested jit. A plain array
stands in for the kernel ref (``ref[idx]`` is the same indexing)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.core import common
from attnlab.kernels.flash import ref_reads

BQ, BK, T, S, H = 4, 8, 12, 10, 3


def table(*shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


BIAS, REL, VEC = table(T, S, seed=1), table(T + S, H, seed=2), table(S, seed=3)
SCALE, W11, FLAG = jnp.float32(0.7), table(1, 1, seed=6), jnp.asarray(True)

MODS = {
    "bias[q, k]": lambda s, b, h, qi, ki: s + BIAS[qi, ki],
    "rel[q - k + S, h]": lambda s, b, h, qi, ki: s + REL[qi - ki + S, h],
    "negative index wraps": lambda s, b, h, qi, ki: s + REL[ki - qi, h],
    "take clip": lambda s, b, h, qi, ki: s + jnp.take(VEC, ki + 5, mode="clip"),
    "take fill": lambda s, b, h, qi, ki: s * jnp.take(VEC, ki + 5, mode="fill",
                                                      fill_value=-2.0),
    "row slice (offset dim)": lambda s, b, h, qi, ki: s + jnp.take(REL, qi, axis=0)[..., 1],
    "scalar read": lambda s, b, h, qi, ki: s * REL[3, h],
    "nested jit": lambda s, b, h, qi, ki: s + jax.jit(lambda t, i: t[i])(VEC, ki),
    "whole use": lambda s, b, h, qi, ki: s + VEC.sum() * BIAS[qi, ki],
    # captured arrays that meet the score directly (passed through to the score-side part)
    "captured scalar": lambda s, b, h, qi, ki: s * SCALE,
    "captured [1, 1]": lambda s, b, h, qi, ki: s + W11,
    "captured bool flag": lambda s, b, h, qi, ki: jnp.where(FLAG, s, 0.0),
}


@pytest.mark.parametrize("name", list(MODS))
def test_indexed_reads_equal_plain_evaluation(name):
  s = table(BQ, BK, seed=4)
  q_idx = jnp.arange(BQ, dtype=jnp.int32)[:, None] + 7  # reaches past T - 1: clamped reads
  k_idx = jnp.arange(BK, dtype=jnp.int32)[None, :] + 1
  b, h = jnp.int32(0), jnp.int32(2)
  fn, consts = common.hoist_constants(lambda *a: common.call_score_mod(MODS[name], *a[:1],
                                                                       a[1:]),
                                      s, b, h, q_idx, k_idx)
  assert consts, "the mod captures arrays"
  want = fn(s, b, h, q_idx, k_idx, *consts)
  split = ref_reads.split(fn.jaxpr, len(consts))
  refs = [ref_reads.RefArray(c, c.shape, c.dtype) for c in consts]
  got, vjp = ref_reads.apply(split, refs, s, b, h, q_idx, k_idx, with_vjp=True)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
  ds = table(BQ, BK, seed=5)
  want_ds = jax.vjp(lambda x: fn(x, b, h, q_idx, k_idx, *consts), s)[1](ds)[0]
  chex.assert_trees_all_close(vjp(ds), want_ds, rtol=1e-6, atol=1e-6)


def test_reads_of_the_indexed_array_are_tile_shaped():
  """Every read of the captured [T, S] bias is of the tile's [BQ, BK] elements."""
  s = table(BQ, BK)
  idx = (jnp.int32(0), jnp.int32(0), jnp.zeros((BQ, 1), jnp.int32),
         jnp.zeros((1, BK), jnp.int32))
  fn, consts = common.hoist_constants(
      lambda *a: common.call_score_mod(MODS["bias[q, k]"], a[0], a[1:]), s, *idx)
  split = ref_reads.split(fn.jaxpr, len(consts))
  seen = []

  class Spy:
    shape, dtype = BIAS.shape, BIAS.dtype

    def __getitem__(self, index):
      out = BIAS[index]
      seen.append(out.shape)
      return out

  ref_reads.apply(split, [ref_reads.RefArray(Spy(), BIAS.shape, BIAS.dtype)], s, *idx, False)
  assert seen == [(BQ, BK)]
