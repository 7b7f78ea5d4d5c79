"""Tile tables and tile skipping: the wrapper's tables vs a naive numpy computation from the
dense mask, in-kernel mask evaluation vs ``Mask.allowed``, and the forward kernel's own count
of the tiles it processed (``debug_counts``)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import masks
from attnlab.kernels import build_table, flash_attention, table_layout, tile_states
from attnlab.kernels.flash import masks as kernel_masks

from _kernel_helpers import jit_fast

EMPTY, PARTIAL, FULL = masks.EMPTY, masks.PARTIAL, masks.FULL


def naive_states(mask, tq, tk, bq, bk, nq, nk, batch):
  """Per tile: EMPTY if no real (q, k) pair is allowed, FULL if all are and the tile has no
  padded keys, else PARTIAL. [batch, nq, nk]."""
  dense = np.ones((batch, tq, tk), bool) if mask is None else np.broadcast_to(
      np.asarray(mask.dense(tq, tk)), (batch, tq, tk))
  out = np.full((batch, nq, nk), EMPTY, np.int32)
  for i in range(nq):
    for j in range(nk):
      rows, cols = slice(i * bq, min((i + 1) * bq, tq)), slice(j * bk, min((j + 1) * bk, tk))
      tile = dense[:, rows, cols]
      if tile.size == 0:
        continue
      has_pad_keys = (j + 1) * bk > tk
      any_, all_ = tile.any(axis=(1, 2)), tile.all(axis=(1, 2))
      out[:, i, j] = np.where(~any_, EMPTY, np.where(all_ & ~has_pad_keys, FULL, PARTIAL))
  return out


SEG = np.repeat(np.array([[0, 0, 1, 1, 1, 2, 2]]), 2, axis=0)
SEG = np.repeat(SEG, 15, axis=1)[:, :100]  # [2, 100]
SEG[1] = np.sort(np.r_[np.zeros(70, np.int32), np.ones(30, np.int32)])

STATIC_MASKS = {
    "none": None,
    "causal": masks.CausalMask(),
    "window": masks.SlidingWindowMask(17, 3),
    "causal_offset": masks.CausalMask(40),
    "lengths_static": masks.ValidLengthMask(kv_lengths=np.array([37, 100], np.int32)),
    "prefix_static": masks.PrefixLMMask(np.array([45], np.int32)),
}


@pytest.mark.parametrize("name", list(STATIC_MASKS))
def test_static_tables_match_naive(name):
  mask = STATIC_MASKS[name]
  tq, tk, bq, bk = 70, 100, 16, 32
  nq, nk = 5, 4  # padded to multiples of 16 and 32 (q: 80, k: 128)
  got = tile_states(mask, tq, tk, bq, bk, nq, nk)
  assert isinstance(got, np.ndarray)  # static masks give trace-time tables
  want = naive_states(mask, tq, tk, bq, bk, nq, nk, batch=2)
  chex.assert_trees_all_equal(np.broadcast_to(got, want.shape), want)


def test_data_dependent_tables_are_conservative():
  mask = masks.SegmentMask(jnp.asarray(SEG)) & masks.CausalMask()
  tq = tk = 100
  got = np.asarray(tile_states(mask, tq, tk, 16, 16, 7, 7))
  want = naive_states(mask, tq, tk, 16, 16, 7, 7, batch=2)
  # Never skips a tile that has an allowed pair, never drops the mask where it is needed.
  assert np.all((got == EMPTY) <= (want == EMPTY))
  assert np.all((got == FULL) <= (want == FULL))
  assert got.shape[0] == 2  # per-batch tables for data-dependent masks
  assert (got == EMPTY).sum() > (want == EMPTY).sum() * 0.5  # and it does skip


@pytest.mark.parametrize("partial_first", [False, True])
def test_build_table_orders_groups(partial_first):
  rng = np.random.default_rng(0)
  states = rng.integers(0, 3, size=(3, 6, 9)).astype(np.int32)
  states[0, 2] = EMPTY  # a row with nothing to do
  table, n_first, n_tot, steps = build_table(states, partial_first)
  assert steps == int((states != EMPTY).sum(-1).max())
  for b in range(3):
    for r in range(6):
      row = states[b, r]
      full, part = np.flatnonzero(row == FULL), np.flatnonzero(row == PARTIAL)
      first, second = (part, full) if partial_first else (full, part)
      assert n_first[b, r] == len(first) and n_tot[b, r] == len(full) + len(part)
      chex.assert_trees_all_equal(table[b, r, :n_tot[b, r]], np.r_[first, second])
      pad = table[b, r, n_tot[b, r]:]
      last = table[b, r, n_tot[b, r] - 1] if n_tot[b, r] else 0
      assert np.all(pad == last)  # no new DMA on TPU for the padding steps


def test_causal_tables_are_contiguous_runs():
  states = tile_states(masks.CausalMask(), 100, 100, 16, 16, 7, 7)
  (table, n_first, n_tot), steps, _, partial_first, contiguous = table_layout(states)
  assert contiguous and not partial_first and steps == 7  # q rows: keys 0..i, FULL first
  table = np.asarray(table).reshape(7, steps)
  chex.assert_trees_all_equal(table[3, :4], np.asarray([0, 1, 2, 3]))
  (table_t, _, _), _, _, partial_first_t, contiguous_t = table_layout(states.transpose(0, 2, 1))
  assert contiguous_t and partial_first_t  # k columns: diagonal (PARTIAL) then queries below
  chex.assert_trees_all_equal(np.asarray(table_t).reshape(7, 7)[3, :4], np.asarray([3, 4, 5, 6]))
  window = tile_states(masks.SlidingWindowMask(40), 100, 100, 16, 16, 7, 7)
  assert not table_layout(window)[4]  # PARTIAL tiles on both ends: indexed through the table


def test_traced_tables_match_static():
  states = np.random.default_rng(1).integers(0, 3, size=(2, 5, 7)).astype(np.int32)
  t_np, f_np, n_np, steps = build_table(states)
  table_j, full_j, tot_j = jax.jit(lambda s: build_table(s)[:3])(states)
  assert table_j.shape[-1] == states.shape[-1]  # traced: one step per k block
  chex.assert_trees_all_equal(np.asarray(full_j), f_np)
  chex.assert_trees_all_equal(np.asarray(tot_j), n_np)
  chex.assert_trees_all_equal(np.asarray(table_j)[..., :steps], t_np)


ALL_MASKS = {
    "causal": masks.CausalMask(3),
    "window": masks.SlidingWindowMask(5, 2),
    "prefix": masks.PrefixLMMask(np.array([7, 20], np.int32)),
    "lengths": masks.ValidLengthMask(kv_lengths=np.array([9, 30], np.int32),
                                     q_lengths=np.array([4, 30], np.int32)),
    "segments_or_causal": masks.SegmentMask(jnp.asarray(SEG[:, :30])) | masks.CausalMask(),
    "full": masks.FullMask(),
}


@pytest.mark.parametrize("name", list(ALL_MASKS))
def test_compiled_mask_matches_allowed(name):
  mask = ALL_MASKS[name]
  compiled = kernel_masks.compile_mask(mask)
  q_pos, k_pos = jnp.arange(8, 24), jnp.arange(4, 30)
  for b in range(2):
    ctx = kernel_masks.TileContext(
        q_pos=q_pos[:, None], k_pos=k_pos[None, :],
        scalar=lambda n: jnp.broadcast_to(compiled.scalars[n], (2,))[b],
        q_vec=lambda n: compiled.q_vecs[n][b][q_pos][:, None],
        k_vec=lambda n: compiled.k_vecs[n][b][k_pos][None, :])
    got = np.broadcast_to(kernel_masks.evaluate(compiled.program, ctx), (16, 26))
    want = np.asarray(mask.allowed(q_pos, k_pos))
    chex.assert_trees_all_equal(got, want[min(b, want.shape[0] - 1)])


def test_unsupported_masks_are_refused():
  arr = masks.ArrayMask(np.tril(np.ones((8, 8), bool)))
  assert "ArrayMask" in kernel_masks.check_supported(arr & masks.CausalMask())
  with pytest.raises(kernel_masks.UnsupportedMask):
    kernel_masks.compile_mask(arr)


@pytest.mark.parametrize("name", ["causal", "window"])
def test_kernel_skips_empty_tiles(name):
  """The forward kernel counts the FULL and PARTIAL tiles it processes; they must equal the
  naive non-empty tiles, so EMPTY tiles are never visited."""
  mask = {"causal": masks.CausalMask(), "window": masks.SlidingWindowMask(20, 0)}[name]
  t, bq, bk = 100, 16, 16
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (1, t, 2, 64)) for kk in ks)
  out, counts = jit_fast(lambda a, b, c: flash_attention(
      a, b, c, mask=mask, block_q=bq, block_k=bk, block_q_bwd=bq, block_k_bwd=bk,
      debug_counts=True), q, k, v)
  nq = nk = 7
  want = naive_states(mask, t, t, bq, bk, nq, nk, batch=1)[0]
  counts = np.asarray(counts)  # [B, H, nq, 2]: (FULL visits, PARTIAL visits)
  for h in range(2):
    chex.assert_trees_all_equal(counts[0, h, :, 0], (want == FULL).sum(-1))
    chex.assert_trees_all_equal(counts[0, h, :, 1], (want == PARTIAL).sum(-1))
  assert counts[0, 0].sum() == (want != EMPTY).sum() < nq * nk


def test_kernel_skips_per_batch_with_segments():
  seg = jnp.asarray(SEG)
  mask = masks.SegmentMask(seg)
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (2, 100, 1, 64)) for kk in ks)
  _, counts = jit_fast(lambda a, b, c, s: flash_attention(
      a, b, c, mask=masks.SegmentMask(s), block_q=16, block_k=16, block_q_bwd=16,
      block_k_bwd=16, debug_counts=True), q, k, v, seg)
  states = np.asarray(tile_states(mask, 100, 100, 16, 16, 7, 7))
  counts = np.asarray(counts)
  for b in range(2):
    chex.assert_trees_all_equal(counts[b, 0, :, 0], (states[b] == FULL).sum(-1))
    chex.assert_trees_all_equal(counts[b, 0, :, 1], (states[b] == PARTIAL).sum(-1))
  assert counts[0, 0].sum() != counts[1, 0].sum()  # the two batch rows skip differently
