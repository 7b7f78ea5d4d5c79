"""Input validation of ``attnlab.attention``: mask shapes, mask vs call ``q_offset``, rows whose
bias is all ``-inf``, and argument checks.

Expected values come from a naive numpy loop (or ``jax.nn.dot_product_attention``), never from
the code under test.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import attnlab
from attnlab import masks


def naive_attention(q, k, v, allowed=None, bias=None, q_offset=0):
  """float64 numpy, one query row at a time; -inf logits and masked keys get no weight, a row
  with no visible finite logit gives zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  out = np.zeros((b, tq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      for i in range(tq):
        s = np.array([q[bi, i, hi] @ k[bi, j, kv] for j in range(tk)]) / math.sqrt(d)
        if bias is not None:
          s = s + np.broadcast_to(np.asarray(bias, np.float64), (b, h, tq, tk))[bi, hi, i]
        ok = np.ones(tk, bool) if allowed is None else np.broadcast_to(allowed,
                                                                        (b, tq, tk))[bi, i]
        ok = ok & (s > -np.inf)
        if ok.any():
          e = np.where(ok, np.exp(np.where(ok, s, 0.0) - s[ok].max()), 0.0)
          out[bi, i, hi] = (e / e.sum()) @ v[bi, :, kv]
  return out


def rand_qkv(b=2, tq=8, tk=8, h=2, kh=1, d=8, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(ks[0], (b, tq, h, d)), jax.random.normal(ks[1], (b, tk, kh, d)),
          jax.random.normal(ks[2], (b, tk, kh, d)))


def rule(tq, tk, left=None, right=0, off=0):
  """Naive local-window rule: query i (absolute i + off) sees key j."""
  i = np.arange(tq)[:, None] + off
  j = np.arange(tk)[None, :]
  ok = np.ones((tq, tk), bool)
  if left is not None:
    ok &= j >= i - left
  if right is not None:
    ok &= j <= i + right
  return ok


IMPLS = ["xla", "chunked", "auto"]
CHUNK = dict(block_q=4, block_k=4)


def call(impl, q, k, v, **kw):
  extra = CHUNK if impl == "chunked" else {}
  return attnlab.attention(q, k, v, implementation=impl, **extra, **kw)


# ----------------------------------------------------------------------------------------------
# 1. Mask shapes are checked against the call, before dispatch, for every implementation.


class MaskShapeTest(parameterized.TestCase):

  @parameterized.parameters(*IMPLS, "pallas")
  def test_array_mask_missing_row(self, impl):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=r"ArrayMask.*\(2 or 1, 8, 8\).*got shape \(1, 7, 8\)"):
      call(impl, q, k, v, mask=masks.ArrayMask(jnp.ones((7, 8), bool)))
    with pytest.raises(ValueError, match=r"ArrayMask.*got shape \(1, 8, 9\)"):
      call(impl, q, k, v, mask=masks.ArrayMask(jnp.ones((8, 9), bool)))

  @parameterized.product(impl=IMPLS + ["pallas"], length=[5, 11])
  def test_segment_ids_wrong_length(self, impl, length):
    q, k, v = rand_qkv()
    seg = masks.SegmentMask(jnp.zeros((2, length), jnp.int32))
    with pytest.raises(ValueError, match=rf"SegmentMask.*\(2 or 1, 8\).*\(2, {length}\)"):
      call(impl, q, k, v, mask=seg)

  @parameterized.parameters(*IMPLS)
  def test_segment_ids_q_and_kv(self, impl):
    q, k, v = rand_qkv(tq=6, tk=8)
    ids = np.asarray([[0, 0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 2, 2, 2]], np.int32)
    # One array for queries and keys cannot serve Tq != Tk.
    with pytest.raises(ValueError, match=r"SegmentMask.*q_len=6 != kv_len=8"):
      call(impl, q, k, v, mask=masks.SegmentMask(jnp.asarray(ids)))
    with pytest.raises(ValueError, match=r"SegmentMask: kv_segment_ids.*\(2, 7\)"):
      call(impl, q, k, v, mask=masks.SegmentMask(jnp.asarray(ids[:, :6]),
                                                 jnp.asarray(ids[:, :7])))
    got = call(impl, q, k, v, mask=masks.SegmentMask(jnp.asarray(ids[:, 2:]), jnp.asarray(ids)))
    allowed = ids[:, 2:, None] == ids[:, None, :]
    chex.assert_trees_all_close(got, naive_attention(q, k, v, allowed), rtol=1e-6, atol=2e-5)

  @parameterized.parameters(*IMPLS)
  def test_lengths_and_prefix_batch(self, impl):
    q, k, v = rand_qkv()
    seg = masks.SegmentMask(jnp.zeros((2, 8), jnp.int32))  # batch_size 2: passes the old check
    with pytest.raises(ValueError, match=r"ValidLengthMask: kv_lengths.*\(2,\).*got shape \(3,\)"):
      call(impl, q, k, v, mask=seg & masks.ValidLengthMask(jnp.array([3, 4, 5])))
    with pytest.raises(ValueError, match=r"ValidLengthMask: q_lengths.*got shape \(3,\)"):
      call(impl, q, k, v, mask=masks.CausalMask() | (seg & masks.ValidLengthMask(
          q_lengths=jnp.array([3, 4, 5]))))
    with pytest.raises(ValueError, match=r"PrefixLMMask: prefix_len.*got shape \(3,\)"):
      call(impl, q, k, v, mask=seg & masks.PrefixLMMask(np.array([1, 2, 3])))
    # Right shapes (and batch-1 broadcasting) still run, and match the naive loop.
    m = masks.ValidLengthMask(jnp.array([5])) & masks.ArrayMask(jnp.asarray(rule(8, 8, 2, 1)))
    allowed = rule(8, 8, 2, 1) & (np.arange(8) < 5)[None, :]
    chex.assert_trees_all_close(call(impl, q, k, v, mask=m), naive_attention(q, k, v, allowed),
                                rtol=1e-6, atol=2e-5)

  def test_checked_under_jit(self):
    q, k, v = rand_qkv()
    f = jax.jit(lambda q, k, v, m: attnlab.attention(q, k, v, mask=m, implementation="chunked",
                                                     **CHUNK))
    with pytest.raises(ValueError, match=r"SegmentMask"):
      f(q, k, v, masks.SegmentMask(jnp.zeros((2, 5), jnp.int32)))


# ----------------------------------------------------------------------------------------------
# 2. Masks built with q_offset=0 follow the call's q_offset; conflicting offsets are refused.


class QOffsetTest(parameterized.TestCase):

  @parameterized.parameters(*IMPLS)
  def test_default_masks_follow_call_offset(self, impl):
    q, k, v = rand_qkv(tq=4, tk=10)
    want_causal = naive_attention(q, k, v, rule(4, 10, None, 0, off=6))
    for kw in (dict(mask=masks.CausalMask()), dict(is_causal=True),
               dict(mask=masks.CausalMask(6)), dict(mask=masks.CausalMask(6), is_causal=True)):
      chex.assert_trees_all_close(call(impl, q, k, v, q_offset=6, **kw), want_causal,
                                  rtol=1e-6, atol=2e-5, custom_message=str(kw))
    got = call(impl, q, k, v, q_offset=6, mask=masks.SlidingWindowMask(3) & masks.ValidLengthMask(
        jnp.array([9, 10])))
    allowed = rule(4, 10, 3, 0, off=6)[None] & (np.arange(10)[None, None, :] <
                                                np.array([9, 10])[:, None, None])
    chex.assert_trees_all_close(got, naive_attention(q, k, v, allowed), rtol=1e-6, atol=2e-5)
    # Prefix-LM: query i (absolute i + 6) sees keys <= i + 6 or inside the prefix.
    got = call(impl, q, k, v, q_offset=6, mask=masks.PrefixLMMask(np.array([8, 0])))
    allowed = rule(4, 10, None, 0, off=6)[None] | (np.arange(10)[None, None, :] <
                                                   np.array([8, 0])[:, None, None])
    chex.assert_trees_all_close(got, naive_attention(q, k, v, allowed), rtol=1e-6, atol=2e-5)

  @parameterized.parameters(*IMPLS)
  def test_own_offset_kept_when_call_offset_is_zero(self, impl):
    q, k, v = rand_qkv(tq=4, tk=10)
    got = call(impl, q, k, v, mask=masks.CausalMask(3))
    chex.assert_trees_all_close(got, naive_attention(q, k, v, rule(4, 10, None, 0, off=3)),
                                rtol=1e-6, atol=2e-5)

  @parameterized.parameters(*IMPLS, "pallas")
  def test_conflicting_offsets_refused(self, impl):
    q, k, v = rand_qkv(tq=4, tk=10)
    with pytest.raises(ValueError, match=r"q_offset=3.*q_offset=6"):
      call(impl, q, k, v, mask=masks.CausalMask(3), q_offset=6)
    with pytest.raises(ValueError, match=r"q_offset=2.*q_offset=6"):
      call(impl, q, k, v, mask=masks.ValidLengthMask(jnp.array([9, 10])) & (
          masks.SlidingWindowMask(2, q_offset=2)), q_offset=6, is_causal=True)

  def test_traced_call_offset(self):
    q, k, v = rand_qkv(tq=4, tk=10)
    for impl in ("xla", "chunked"):
      f = jax.jit(lambda q, k, v, off, impl=impl: call(impl, q, k, v, mask=masks.CausalMask(),
                                                       q_offset=off))
      chex.assert_trees_all_close(f(q, k, v, jnp.int32(6)),
                                  naive_attention(q, k, v, rule(4, 10, None, 0, off=6)),
                                  rtol=1e-6, atol=2e-5)
      # The same traced value in the mask and the call (as attnlab.nn does) is consistent.
      g = jax.jit(lambda q, k, v, off, impl=impl: call(impl, q, k, v,
                                                       mask=masks.CausalMask(off), q_offset=off))
      chex.assert_trees_all_close(g(q, k, v, jnp.int32(5)),
                                  naive_attention(q, k, v, rule(4, 10, None, 0, off=5)),
                                  rtol=1e-6, atol=2e-5)


# ----------------------------------------------------------------------------------------------
# 3. A row whose bias is all -inf gives zeros with zero, finite gradients.


def _bias_with_dead_rows(b, h, tq, tk):
  bias = np.random.RandomState(0).randn(b, h, tq, tk).astype(np.float32)
  bias[0, 0, 2, :] = -np.inf  # a dead row for one head
  bias[1, :, 0, :] = -np.inf  # a dead row for every head
  bias[1, 1, 3, :3] = -np.inf  # a partly dead row
  bias[0, 1, 1, 4] = -np.inf
  return bias


def _reference_via_jax_nn(q, k, v, bias, mask=None):
  """jax.nn.dot_product_attention with the -inf entries turned into a boolean mask (and the
  rows with no visible key set to zero)."""
  bias = jnp.asarray(bias)
  ok = ~jnp.isneginf(bias)
  if mask is not None:
    ok = ok & mask[:, None]
  out = jax.nn.dot_product_attention(q, k, v, bias=jnp.where(ok, bias, 0.0), mask=ok,
                                     implementation="xla")
  live = ok.any(-1)  # [B, H, Tq]
  return jnp.where(jnp.swapaxes(live, 1, 2)[..., None], out, 0.0)


def _grads(fn, q, k, v, bias):
  def loss(q, k, v, bias):
    out = fn(q, k, v, bias)
    w = jax.random.normal(jax.random.PRNGKey(9), out.shape, jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * w)
  return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)


class NegInfBiasTest(parameterized.TestCase):

  @parameterized.product(impl=["xla", "chunked"], with_mask=[False, True])
  def test_values_and_grads(self, impl, with_mask):
    q, k, v = rand_qkv(tq=5, tk=7)
    bias = _bias_with_dead_rows(2, 2, 5, 7)
    m = masks.ValidLengthMask(jnp.array([6, 7])) if with_mask else None
    allowed = None if m is None else np.asarray(m.dense(5, 7))
    fn = lambda q, k, v, bias: call(impl, q, k, v, bias=bias, mask=m)
    out = fn(q, k, v, jnp.asarray(bias))
    chex.assert_tree_all_finite(out)
    chex.assert_trees_all_close(out, naive_attention(q, k, v, allowed, bias), rtol=1e-6,
                                atol=2e-5)
    chex.assert_trees_all_equal(out[0, 2, 0], jnp.zeros(8))
    chex.assert_trees_all_equal(out[1, 0], jnp.zeros((2, 8)))
    got = _grads(fn, q, k, v, jnp.asarray(bias))
    chex.assert_tree_all_finite(got)
    want = _grads(lambda q, k, v, b: _reference_via_jax_nn(
        q, k, v, b, None if m is None else jnp.asarray(allowed)), q, k, v, jnp.asarray(bias))
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=5e-5)

  def test_pallas_interpret(self):
    # The kernel in interpret mode (CPU), head_dim 64, one 16 x 16 tile.
    q, k, v = rand_qkv(b=2, tq=16, tk=16, h=2, kh=1, d=64)
    bias = _bias_with_dead_rows(2, 2, 16, 16)
    fn = lambda q, k, v, bias: attnlab.attention(q, k, v, bias=bias, implementation="pallas",
                                                 interpret=True)
    out = fn(q, k, v, jnp.asarray(bias))
    chex.assert_trees_all_close(out, naive_attention(q, k, v, None, bias), rtol=1e-5,
                                atol=5e-5)
    got = _grads(fn, q, k, v, jnp.asarray(bias))
    chex.assert_tree_all_finite(got)
    want = _grads(_reference_via_jax_nn, q, k, v, jnp.asarray(bias))
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=2e-4)


# ----------------------------------------------------------------------------------------------
# 4. Argument checks.


class ArgumentTest(parameterized.TestCase):

  @parameterized.parameters(*IMPLS)
  def test_misspelt_keyword_is_type_error(self, impl):
    q, k, v = rand_qkv()
    with pytest.raises(TypeError, match=r"is_casual.*did you mean 'is_causal'.*Valid keywords"):
      attnlab.attention(q, k, v, implementation=impl, is_casual=True)
    with pytest.raises(TypeError, match=r"not_an_option"):
      attnlab.attention(q, k, v, implementation=impl, not_an_option=1)

  def test_keyword_of_some_implementation_is_not_type_error(self):
    q, k, v = rand_qkv()
    # block_q is chunked's: "auto" runs chunked, an explicit "xla" refuses it (ValueError).
    chex.assert_trees_all_close(attnlab.attention(q, k, v, block_q=4),
                                naive_attention(q, k, v), rtol=1e-6, atol=2e-5)
    with pytest.raises(ValueError, match=r"'xla'.*block_q") as e:
      attnlab.attention(q, k, v, implementation="xla", block_q=4)
    assert not isinstance(e.value, TypeError)

  def test_misspelt_keyword_other_mechanism(self):
    q, k, v = rand_qkv()
    with pytest.raises(TypeError, match=r"sigmoid_bais.*did you mean 'sigmoid_bias'"):
      attnlab.attention(q, k, v, mechanism="sigmoid", sigmoid_bais=-2.0)

  @parameterized.parameters(0, 0.0, -1.0, float("inf"), float("nan"), "5", True, ([5.0],))
  def test_bad_softcap(self, val):
    q, k, v = rand_qkv()
    for impl in IMPLS:
      with pytest.raises(ValueError, match=r"softcap"):
        attnlab.attention(q, k, v, implementation=impl, softcap=val)

  @parameterized.parameters(0, 0.0, -0.5, float("inf"), float("nan"), "x", False)
  def test_bad_scale(self, val):
    q, k, v = rand_qkv()
    for impl in IMPLS:
      with pytest.raises(ValueError, match=r"scale"):
        attnlab.attention(q, k, v, implementation=impl, scale=val)

  def test_good_scale_and_softcap(self):
    q, k, v = rand_qkv()
    want = jax.nn.dot_product_attention(q, k, v, scale=0.5)
    for scale in (0.5, np.float32(0.5), jnp.float32(0.5)):
      chex.assert_trees_all_close(attnlab.attention(q, k, v, scale=scale, implementation="xla"),
                                  want, rtol=1e-6, atol=2e-6)
    chex.assert_tree_all_finite(attnlab.attention(q, k, v, softcap=5, implementation="xla"))
    chex.assert_tree_all_finite(attnlab.attention(q, k, v, softcap=np.float32(2.5)))
