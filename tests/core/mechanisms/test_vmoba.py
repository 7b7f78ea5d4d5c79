"""VMoBA ("vmoba"): both implementations against a naive numpy reference written here (blocks
by loops over grid coordinates, gate, per-query / global top pairs / cumulative threshold
selection, one softmax), values and gradients (central differences); keeping every block is
dense attention; causal routing; the module cycles 1D-2D-3D partitions by layer."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.nn.mechanisms.vmoba import VMoBAAttention

from numeric_checks import assert_close, check, rand

GRID = (3, 4, 4)


def naive_blocks(partition, bs=(1, 2, 2)):
  """Block id of every cell of GRID."""
  sizes = {"1d": (bs[0], 4, 4), "2d": (3, bs[1], bs[2]), "3d": bs}[partition]
  nper = [g // s for g, s in zip(GRID, sizes)]
  out = np.zeros(48, int)
  for i in range(48):
    c = np.unravel_index(i, GRID)
    out[i] = np.ravel_multi_index([c[a] // sizes[a] for a in range(3)], nper)
  return out


def naive_vmoba(q, k, v, partition, top_k, threshold, global_sel, causal):
  b, t, h, d = q.shape
  kh = k.shape[2]
  blk = naive_blocks(partition)
  nb = blk.max() + 1
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      kbar = np.stack([k[bi, blk == j, kv].mean(0) for j in range(nb)])
      gate = q[bi, :, hi] @ kbar.T  # [T, NB]
      cand = np.ones((t, nb), bool)
      if causal:
        cand = np.array([[np.all(np.where(blk == j)[0] <= i) for j in range(nb)]
                         for i in range(t)])
      cand[np.arange(t), blk] = False  # own block: kept separately
      per_row = causal or not global_sel
      keep = np.zeros((t, nb), bool)
      groups = [[(i, j) for j in range(nb)] for i in range(t)] if per_row else [
          [(i, j) for i in range(t) for j in range(nb)]]
      for pairs in groups:
        pairs = [p for p in pairs if cand[p]]
        pairs.sort(key=lambda p: -gate[p])
        if threshold is None:
          n = (top_k - 1) if per_row else (top_k - 1) * t
          chosen = pairs[:n]
        elif pairs:
          e = np.exp(np.array([gate[p] for p in pairs]) - max(gate[p] for p in pairs))
          share = e / e.sum()
          chosen = [p for n, p in enumerate(pairs) if share[:n].sum() < threshold]
        else:
          chosen = []
        for p in chosen:
          keep[p] = True
      keep[np.arange(t), blk] = True
      for i in range(t):
        keys = [j for j in range(t) if keep[i, blk[j]] and (not causal or j <= i)]
        s = np.array([q[bi, i, hi] @ k[bi, j, kv] for j in keys]) / np.sqrt(d)
        w = np.exp(s - s.max())
        out[bi, i, hi] = (w / w.sum()) @ v[bi, keys, kv]
  return out


def inputs(seed, h=2, kh=1, d=4):
  return [rand(1, 48, h, d, seed=seed), rand(1, 48, kh, d, seed=seed + 1),
          rand(1, 48, kh, d, seed=seed + 2)]


SLOW = pytest.mark.slow
CASES = [("3d", 3, None, True, False), pytest.param("1d", 2, None, True, False, marks=SLOW),
         ("2d", 2, 0.6, True, False), pytest.param("3d", 2, None, False, False, marks=SLOW),
         pytest.param("3d", 3, 0.5, True, True, marks=SLOW), ("2d", 2, None, True, True)]


@pytest.mark.parametrize("impl", ["chunked", pytest.param("xla", marks=SLOW)])
@pytest.mark.parametrize("partition,top_k,threshold,global_sel,causal", CASES)
def test_vmoba_vs_naive(impl, partition, top_k, threshold, global_sel, causal):
  def core(q, k, v):
    return attnlab.attention(q, k, v, mechanism="vmoba", implementation=impl,
                             is_causal=causal, grid_shape=GRID, block_shape=(1, 2, 2),
                             partition=partition, top_k=top_k, threshold=threshold,
                             global_selection=global_sel)

  check(core, lambda q, k, v: naive_vmoba(q, k, v, partition, top_k, threshold, global_sel,
                                          causal), inputs(0), seeds=(11,))


def test_every_block_is_dense_attention_and_causal_routing():
  q, k, v = inputs(1)
  fn = lambda causal, **kw: jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, mechanism="vmoba", implementation="chunked", is_causal=causal, grid_shape=GRID,
      block_shape=(1, 2, 2), **kw))
  assert_close(fn(False, top_k=12)(q, k, v), attnlab.attention(q, k, v, implementation="xla"))
  assert_close(fn(False, threshold=1.0)(q, k, v),
               attnlab.attention(q, k, v, implementation="xla"))
  p = 21
  q2, k2, v2 = (np.concatenate([x[:, :p], x[:, p:] + 5.0], axis=1) for x in (q, k, v))
  run = fn(True, top_k=2, partition="1d")
  chex.assert_trees_all_equal(run(q, k, v)[:, :p], run(q2, k2, v2)[:, :p])


def test_module_cycles_partitions_and_bad_arguments():
  mods = [VMoBAAttention(16, 2, grid_shape=(-1, 4, 4), layer_index=i, rngs=nnx.Rngs(0))
          for i in range(4)]
  assert [m.partition for m in mods] == ["1d", "2d", "3d", "1d"]
  q, k, v = inputs(0)
  with pytest.raises(ValueError, match="threshold must be None or a number"):
    attnlab.attention(q, k, v, mechanism="vmoba", grid_shape=GRID, block_shape=(1, 2, 2),
                      threshold=1.5)
  with pytest.raises(ValueError, match="partition must be one of"):
    attnlab.attention(q, k, v, mechanism="vmoba", grid_shape=GRID, partition="4d")
  with pytest.raises(ValueError, match="partition must be None or one of"):
    VMoBAAttention(16, 2, partition="4d", rngs=nnx.Rngs(0))
