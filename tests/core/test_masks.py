"""Masks vs naive per-pair rules written here; block summaries vs a naive tile reduction."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from attnlab import masks


def naive_rule(kind, i, j, b, p):
  """The definition of each mask, one (query, key) pair at a time."""
  if kind == "causal":
    return j <= i + p["off"]
  if kind == "window":
    return i + p["off"] - p["left"] <= j <= i + p["off"] + p["right"]
  if kind == "prefix":
    return j <= i or j < p["prefix"][b]
  if kind == "segment":
    return p["qseg"][b][i] == p["kseg"][b][j]
  if kind == "lengths":
    return j < p["kv_len"][b] and i < p["q_len"][b]
  raise ValueError(kind)


B, TQ, TK = 2, 13, 17
RNG = np.random.RandomState(0)
PARAMS = dict(off=3, left=4, right=2, prefix=[5, 0],
              qseg=np.sort(RNG.randint(0, 4, (B, TQ)), 1),
              kseg=np.sort(RNG.randint(0, 4, (B, TK)), 1), kv_len=[9, 17], q_len=[13, 6])


def make(kind):
  p = PARAMS
  return {
      "causal": lambda: masks.CausalMask(q_offset=p["off"]),
      "window": lambda: masks.SlidingWindowMask(p["left"], p["right"], q_offset=p["off"]),
      "prefix": lambda: masks.PrefixLMMask(np.asarray(p["prefix"])),
      "segment": lambda: masks.SegmentMask(jnp.asarray(p["qseg"]), jnp.asarray(p["kseg"])),
      "lengths": lambda: masks.ValidLengthMask(jnp.asarray(p["kv_len"]), jnp.asarray(p["q_len"])),
  }[kind]()


def naive_dense(kind):
  return np.array([[[naive_rule(kind, i, j, b, PARAMS) for j in range(TK)] for i in range(TQ)]
                   for b in range(B)])


def naive_summary(dense, bq, bk):
  b, tq, tk = dense.shape
  out = np.zeros((b, -(-tq // bq), -(-tk // bk)), np.int32)
  for bi in range(b):
    for qi in range(out.shape[1]):
      for ki in range(out.shape[2]):
        tile = dense[bi, qi * bq:(qi + 1) * bq, ki * bk:(ki + 1) * bk]
        out[bi, qi, ki] = masks.FULL if tile.all() else (masks.PARTIAL if tile.any() else
                                                         masks.EMPTY)
  return out


KINDS = ["causal", "window", "prefix", "segment", "lengths"]


class MaskTest(parameterized.TestCase):

  @parameterized.parameters(*KINDS)
  def test_dense_matches_rule(self, kind):
    got = np.broadcast_to(np.asarray(make(kind).dense(TQ, TK)), (B, TQ, TK))
    chex.assert_trees_all_equal(got, naive_dense(kind))

  @parameterized.product(kind=KINDS, blocks=[(4, 5), (1, 1), (13, 17), (8, 16)])
  def test_block_summary_exact(self, kind, blocks):
    # Single masks are exact (not merely conservative) on these inputs.
    got = np.broadcast_to(np.asarray(make(kind).block_summary(TQ, TK, *blocks)),
                          naive_summary(naive_dense(kind), *blocks).shape)
    chex.assert_trees_all_equal(got, naive_summary(naive_dense(kind), *blocks))

  @parameterized.parameters(("causal", "segment"), ("window", "prefix"), ("lengths", "causal"))
  def test_composition(self, a, b):
    da, db = naive_dense(a), naive_dense(b)
    m_and, m_or = make(a) & make(b), make(a) | make(b)
    chex.assert_trees_all_equal(np.broadcast_to(m_and.dense(TQ, TK), da.shape), da & db)
    chex.assert_trees_all_equal(np.broadcast_to(m_or.dense(TQ, TK), da.shape), da | db)
    # Summaries are conservative: never EMPTY where a pair is allowed, never FULL where one
    # is blocked.
    for m, d in ((m_and, da & db), (m_or, da | db)):
      got = np.broadcast_to(np.asarray(m.block_summary(TQ, TK, 4, 5)), (B, 4, 4))
      exact = naive_summary(d, 4, 5)
      self.assertTrue(np.all((got == masks.EMPTY) <= (exact == masks.EMPTY)))
      self.assertTrue(np.all((got == masks.FULL) <= (exact == masks.FULL)))

  def test_static_masks_give_numpy_summaries(self):
    self.assertTrue(masks.is_static(masks.CausalMask().block_summary(8, 8, 4, 4)))
    self.assertFalse(masks.is_static(make("segment").block_summary(TQ, TK, 4, 4)))

  def test_array_mask_roundtrip(self):
    d = naive_dense("window")
    m = masks.ArrayMask(jnp.asarray(d))
    chex.assert_trees_all_equal(m.dense(TQ, TK), d)
    chex.assert_trees_all_equal(m.block_summary(TQ, TK, 4, 5), naive_summary(d, 4, 5))

  def test_errors(self):
    with pytest.raises(ValueError, match="left"):
      masks.SlidingWindowMask(-1)
    with pytest.raises(ValueError, match="q_segment_ids"):
      masks.SegmentMask(jnp.zeros((3,), jnp.int32))
    with pytest.raises(TypeError, match="kv_lengths"):
      masks.ValidLengthMask(jnp.zeros((2,), jnp.float32))
    with pytest.raises(TypeError, match="Mask"):
      masks.CausalMask() & np.ones((3, 3), bool)
    with pytest.raises(TypeError, match="boolean"):
      masks.ArrayMask(np.ones((3, 3), np.int32))

  def test_masks_are_pytrees(self):
    m = make("segment") & make("causal")
    leaves = [x for x in __import__("jax").tree.leaves(m)]
    chex.assert_equal(len(leaves), 3)  # two segment id arrays and the causal q_offset

  def test_check_shape(self):
    # Every mask of make() fits the call it was built for, alone and composed.
    for kind in KINDS:
      make(kind).check_shape(B, TQ, TK)
      (make(kind) & make("causal") | make("window")).check_shape(B, TQ, TK)
    masks.ArrayMask(jnp.asarray(naive_dense("window")[:1])).check_shape(B, TQ, TK)
    cases = [
        (make("segment"), (B, TQ + 1, TK),
         r"SegmentMask: q_segment_ids.*\(2 or 1, 14\).*\(2, 13\)"),
        (make("segment"), (B, TQ, TK - 1),
         r"SegmentMask: kv_segment_ids.*\(2 or 1, 16\).*\(2, 17\)"),
        (make("segment"), (3, TQ, TK), r"SegmentMask: q_segment_ids.*\(3 or 1, 13\).*\(2, 13\)"),
        (masks.SegmentMask(jnp.zeros((B, TQ), jnp.int32)), (B, TQ, TK),
         r"SegmentMask.*q_len=13 != kv_len=17"),
        (make("lengths"), (3, TQ, TK), r"ValidLengthMask: kv_lengths.*\(3,\).*got shape \(2,\)"),
        (make("prefix"), (3, TQ, TK), r"PrefixLMMask: prefix_len.*got shape \(2,\)"),
        (masks.ArrayMask(jnp.asarray(naive_dense("window"))), (B, TQ - 1, TK),
         r"ArrayMask: array.*\(2 or 1, 12, 17\).*got shape \(2, 13, 17\)"),
        # Nested inside And / Or.
        (make("causal") & (make("window") | make("lengths")), (3, TQ, TK), r"ValidLengthMask"),
    ]
    for m, args, msg in cases:
      with pytest.raises(ValueError, match=msg):
        m.check_shape(*args)

  def test_align_q_offset(self):
    # Offset-0 masks take the call's offset; the dense result is the naive rule at that offset.
    aligned = (masks.CausalMask() & masks.SlidingWindowMask(4, 2)).align_q_offset(3)
    want = naive_dense("causal") & naive_dense("window")  # both with off=3
    chex.assert_trees_all_equal(np.broadcast_to(aligned.dense(TQ, TK), want.shape), want)
    pre = masks.PrefixLMMask(np.asarray(PARAMS["prefix"])).align_q_offset(3)
    want = np.array([[[j <= i + 3 or j < PARAMS["prefix"][b] for j in range(TK)]
                      for i in range(TQ)] for b in range(B)])
    chex.assert_trees_all_equal(np.asarray(pre.dense(TQ, TK)), want)
    # Same offset, call offset 0, or masks without positions: unchanged.
    m = make("causal") & make("segment")
    self.assertIs(m.align_q_offset(3), m)
    self.assertIs(m.align_q_offset(0), m)
    lengths = make("lengths")
    self.assertIs(lengths.align_q_offset(5), lengths)
    with pytest.raises(ValueError, match=r"q_offset=3 .*q_offset=5"):
      (make("segment") | make("causal")).align_q_offset(5)
