"""Attention core: dense reference vs a naive loop, chunked vs dense, transforms, errors."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import Mesh, PartitionSpec as P

import attnlab
from attnlab import masks


def naive_attention(q, k, v, allowed=None, bias=None, scale=None, softcap=None, slopes=None,
                    normalizer="softmax", sigmoid_bias=None):
  """One query row at a time, in float64 numpy, straight from the definitions."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  scale = 1 / math.sqrt(d) if scale is None else scale
  out = np.zeros((b, tq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      for i in range(tq):
        s = np.array([q[bi, i, hi] @ k[bi, j, kv] for j in range(tk)]) * scale
        if softcap is not None:
          s = softcap * np.tanh(s / softcap)
        if bias is not None:
          s = s + np.broadcast_to(bias, (b, h, tq, tk))[bi, hi, i]
        if slopes is not None:
          s = s - slopes[hi] * np.abs(i - np.arange(tk))
        ok = np.ones(tk, bool) if allowed is None else np.broadcast_to(allowed,
                                                                        (b, tq, tk))[bi, i]
        if normalizer == "sigmoid":
          sb = -math.log(tk) if sigmoid_bias is None else sigmoid_bias
          w = np.where(ok, 1 / (1 + np.exp(-(s + sb))), 0.0)
        elif ok.any():
          e = np.where(ok, np.exp(s - s[ok].max()), 0.0)
          w = e / e.sum()
        else:
          w = np.zeros(tk)
        out[bi, i, hi] = w @ v[bi, :, kv]
  return out


def rand_qkv(b=2, tq=11, tk=13, h=4, kh=2, d=8, dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(ks[0], (b, tq, h, d), dtype)
  k = jax.random.normal(ks[1], (b, tk, kh, d), dtype)
  v = jax.random.normal(ks[2], (b, tk, kh, d), dtype)
  return q, k, v


def mask_of(kind, b, tq, tk):
  rng = np.random.RandomState(1)
  if kind == "none":
    return None
  if kind == "causal":
    return masks.CausalMask()
  if kind == "window":
    return masks.SlidingWindowMask(3, 1)
  if kind == "prefix":
    return masks.PrefixLMMask(jnp.asarray([4, 0][:b]))
  if kind == "segment":
    seg = np.sort(rng.randint(0, 3, (b, max(tq, tk))), 1)
    return masks.SegmentMask(jnp.asarray(seg[:, :tq]), jnp.asarray(seg[:, :tk])) & (
        masks.CausalMask())
  if kind == "lengths":
    return masks.ValidLengthMask(jnp.asarray([tk - 4, tk][:b]))
  raise ValueError(kind)


MASK_KINDS = ["none", "causal", "window", "prefix", "segment", "lengths"]


class DenseReferenceTest(chex.TestCase):

  @parameterized.product(kind=MASK_KINDS, heads=[(4, 4), (4, 2), (4, 1)])
  def test_softmax_vs_naive(self, kind, heads):
    q, k, v = rand_qkv(h=heads[0], kh=heads[1])
    m = mask_of(kind, 2, 11, 13)
    allowed = None if m is None else np.asarray(m.dense(11, 13))
    got = attnlab.attention(q, k, v, mask=m, implementation="xla")
    chex.assert_trees_all_close(got, naive_attention(q, k, v, allowed), rtol=1e-7, atol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_extras_vs_naive(self):
    q, k, v = rand_qkv()
    bias = np.random.RandomState(0).randn(1, 4, 11, 13).astype(np.float32)
    slopes = attnlab.alibi_slopes(4)
    fn = self.variant(functools.partial(attnlab.attention, softcap=3.0, alibi_slopes=slopes,
                                        scale=0.3, implementation="xla"))
    got = fn(q, k, v, bias=bias)
    want = naive_attention(q, k, v, bias=bias, softcap=3.0, slopes=slopes, scale=0.3)
    chex.assert_trees_all_close(got, want, rtol=1e-7, atol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_sigmoid_vs_naive(self):
    q, k, v = rand_qkv()
    m = mask_of("causal", 2, 11, 13)
    fn = self.variant(functools.partial(attnlab.attention, mechanism="sigmoid", mask=m,
                                        implementation="xla"))
    got = fn(q, k, v)
    want = naive_attention(q, k, v, np.asarray(m.dense(11, 13)), normalizer="sigmoid")
    chex.assert_trees_all_close(got, want, rtol=1e-7, atol=2e-5)

  def test_matches_jax_nn(self):
    q, k, v = rand_qkv(tq=13, tk=13)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    chex.assert_trees_all_close(attnlab.attention(q, k, v, is_causal=True), want, rtol=1e-7,
                                atol=2e-6)

  def test_alibi_slopes_closed_form(self):
    # Paper: for 8 heads, slopes 1/2, 1/4, ..., 1/256.
    chex.assert_trees_all_close(attnlab.alibi_slopes(8),
                                np.asarray([2.0**-i for i in range(1, 9)]), rtol=1e-7)
    # Non power of two: the 8 slopes of 8 heads plus every other slope of 16 heads.
    s16 = [2.0**(-0.5 * i) for i in range(1, 17)]
    chex.assert_trees_all_close(attnlab.alibi_slopes(12),
                                np.asarray([2.0**-i for i in range(1, 9)] + s16[0::2][:4]),
                                rtol=1e-6)

  def test_return_weights_rows_sum_to_one(self):
    q, k, v = rand_qkv()
    out, w = attnlab.attention(q, k, v, is_causal=True, return_weights=True)
    chex.assert_shape(w, (2, 4, 11, 13))
    chex.assert_trees_all_close(w.sum(-1), 1.0, rtol=1e-7, atol=1e-6)
    # out is the weighted sum of v with those weights (GQA: head h reads kv head h // 2).
    vv = jnp.repeat(v, 2, axis=2)
    chex.assert_trees_all_close(out, jnp.einsum("bhqk,bkhd->bqhd", w, vv), rtol=1e-7, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_head_mask(self):
    q, k, v = rand_qkv()
    hm = jnp.array([1.0, 0.0, 0.5, 1.0])
    got = self.variant(attnlab.attention)(q, k, v, head_mask=hm)
    want = naive_attention(q, k, v) * np.asarray(hm)[None, None, :, None]
    chex.assert_trees_all_close(got, want, rtol=1e-7, atol=2e-5)


def _grads(fn, q, k, v, bias=None):
  def loss(q, k, v, bias):
    out = fn(q, k, v, bias)
    # A fixed random projection so every output element matters differently.
    w = jax.random.normal(jax.random.PRNGKey(9), out.shape, jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * w)
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  return jax.grad(loss, argnums=argnums)(q, k, v, bias)


class ChunkedTest(parameterized.TestCase):

  @parameterized.product(kind=MASK_KINDS, heads=[(4, 2), (2, 1)], mechanism=["softmax",
                                                                              "sigmoid"])
  def test_values_and_grads_vs_dense(self, kind, heads, mechanism):
    # Lengths 11 / 13 with blocks 4 / 5: ragged last blocks on both axes.
    q, k, v = rand_qkv(h=heads[0], kh=heads[1])
    m = mask_of(kind, 2, 11, 13)
    dense = functools.partial(attnlab.attention, mechanism=mechanism, mask=m,
                              implementation="xla")
    chunk = functools.partial(attnlab.attention, mechanism=mechanism, mask=m,
                              implementation="chunked", block_q=4, block_k=5)
    chex.assert_trees_all_close(chunk(q, k, v), dense(q, k, v), rtol=1e-7, atol=2e-5)
    gd = _grads(lambda q, k, v, b: dense(q, k, v), q, k, v)
    gc = _grads(lambda q, k, v, b: chunk(q, k, v), q, k, v)
    chex.assert_trees_all_close(gc, gd, rtol=1e-7, atol=5e-5)

  def test_extras_and_bias_grad(self):
    q, k, v = rand_qkv()
    bias = jax.random.normal(jax.random.PRNGKey(3), (2, 1, 11, 13))
    kw = dict(mask=masks.CausalMask(), softcap=4.0, alibi_slopes=attnlab.alibi_slopes(4))
    dense = lambda q, k, v, b: attnlab.attention(q, k, v, bias=b, implementation="xla", **kw)
    chunk = lambda q, k, v, b: attnlab.attention(q, k, v, bias=b, implementation="chunked",
                                                 block_q=4, block_k=4, **kw)
    chex.assert_trees_all_close(chunk(q, k, v, bias), dense(q, k, v, bias), rtol=1e-7,
                                atol=2e-5)
    chex.assert_trees_all_close(_grads(chunk, q, k, v, bias), _grads(dense, q, k, v, bias),
                                rtol=1e-7, atol=5e-5)

  @parameterized.parameters("causal", "segment")
  def test_bfloat16(self, kind):
    q, k, v = rand_qkv(dtype=jnp.bfloat16)
    m = mask_of(kind, 2, 11, 13)
    dense = lambda q, k, v, b: attnlab.attention(q, k, v, mask=m, implementation="xla")
    chunk = lambda q, k, v, b: attnlab.attention(q, k, v, mask=m, implementation="chunked",
                                                 block_q=4, block_k=5)
    out = chunk(q, k, v, None)
    chex.assert_type(out, jnp.bfloat16)
    # bf16 has an 8-bit mantissa (relative step 2^-8 = 0.004); the two paths round the
    # probabilities at different points, so allow a few bf16 steps on O(1) values.
    chex.assert_trees_all_close(out.astype(np.float32),
                                dense(q, k, v, None).astype(np.float32), rtol=1e-7, atol=3e-2)
    to_f32 = lambda gs: tuple(g.astype(np.float32) for g in gs)
    chex.assert_trees_all_close(to_f32(_grads(chunk, q, k, v)), to_f32(_grads(dense, q, k, v)),
                                rtol=1e-7, atol=6e-2)

  def test_empty_tiles_skipped(self):
    # A causal mask over 4 x 4 blocks has 10 non-empty tiles; the tile table lists exactly
    # those, counted here from the naive definition.
    from attnlab.core import chunked
    summary = masks.CausalMask().block_summary(16, 16, 4, 4)
    table, counts, table_t, counts_t = chunked.tile_table(summary, 4, 4)
    chex.assert_trees_all_equal(np.asarray(counts), np.asarray([1, 2, 3, 4]))
    chex.assert_trees_all_equal(np.asarray(counts_t), np.asarray([4, 3, 2, 1]))
    for i in range(4):
      chex.assert_trees_all_equal(np.sort(table[i, :counts[i]]), np.arange(i + 1))

  def test_fully_masked_rows_are_zero(self):
    q, k, v = rand_qkv()
    m = masks.ValidLengthMask(q_lengths=jnp.array([5, 11]), kv_lengths=jnp.array([13, 13]))
    for impl in ("xla", "chunked"):
      out = attnlab.attention(q, k, v, mask=m, implementation=impl)
      chex.assert_trees_all_equal(out[0, 5:], jnp.zeros_like(out[0, 5:]))
      chex.assert_tree_all_finite(out)
    g = jax.grad(lambda q: attnlab.attention(q, k, v, mask=m, implementation="chunked").sum())(q)
    chex.assert_tree_all_finite(g)


class TransformTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_variants(self):
    q, k, v = rand_qkv()
    fn = self.variant(functools.partial(attnlab.attention, is_causal=True,
                                        implementation="chunked", block_q=4, block_k=4))
    want = naive_attention(q, k, v, np.tril(np.ones((11, 13), bool)))
    chex.assert_trees_all_close(fn(q, k, v), want, rtol=1e-7, atol=2e-5)

  def test_vmap(self):
    q, k, v = rand_qkv(b=3)
    f = lambda q, k, v: attnlab.attention(q[None], k[None], v[None], is_causal=True,
                                          implementation="chunked", block_q=4)[0]
    got = jax.vmap(f)(q, k, v)
    chex.assert_trees_all_close(got, attnlab.attention(q, k, v, is_causal=True), rtol=1e-7,
                                atol=2e-5)

  def test_pmap(self):
    n = min(jax.local_device_count(), 4)
    q, k, v = rand_qkv(b=n)
    f = lambda q, k, v: attnlab.attention(q[None], k[None], v[None], is_causal=True,
                                          implementation="chunked", block_q=4)[0]
    got = jax.pmap(f)(q, k, v)
    chex.assert_trees_all_close(got, attnlab.attention(q, k, v, is_causal=True), rtol=1e-7,
                                atol=2e-5)

  def test_shard_map_over_batch_and_heads(self):
    devices = np.array(jax.devices()[:4]).reshape(2, 2)
    mesh = Mesh(devices, ("data", "model"))
    q, k, v = rand_qkv(b=2, h=4, kh=2)
    spec = P("data", None, "model", None)
    seg = jnp.asarray(np.sort(np.random.RandomState(0).randint(0, 3, (2, 13)), 1))

    def local(q, k, v, seg):
      m = masks.SegmentMask(seg[:, :11], seg)
      return attnlab.attention(q, k, v, mask=m, is_causal=True, implementation="chunked",
                               block_q=4, block_k=4)

    f = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P("data", None)),
                      out_specs=spec)
    got = jax.jit(f)(q, k, v, seg)
    m = masks.SegmentMask(seg[:, :11], seg)
    want = attnlab.attention(q, k, v, mask=m, is_causal=True, implementation="xla")
    chex.assert_trees_all_close(got, want, rtol=1e-7, atol=2e-5)

  def test_mask_as_jit_argument(self):
    q, k, v = rand_qkv()
    f = jax.jit(lambda q, k, v, m: attnlab.attention(q, k, v, mask=m, implementation="chunked",
                                                     block_q=4, block_k=4))
    m = masks.ValidLengthMask(jnp.array([7, 13]))
    want = attnlab.attention(q, k, v, mask=m, implementation="xla")
    chex.assert_trees_all_close(f(q, k, v, m), want, rtol=1e-7, atol=2e-5)


class ErrorTest(parameterized.TestCase):

  def test_bad_shapes(self):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=r"q must have shape"):
      attnlab.attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"multiple of k/v heads"):
      attnlab.attention(q, jnp.zeros((2, 13, 3, 8)), jnp.zeros((2, 13, 3, 8)))
    with pytest.raises(ValueError, match=r"batch size"):
      attnlab.attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"head_dim"):
      attnlab.attention(q, k[..., :4], v)
    # A bias broadcasts with numpy's rules ([H, Tq, Tk] and [Tq, Tk] work, issue 7); a shape
    # that does not broadcast is refused.
    with pytest.raises(ValueError, match=r"bias must broadcast"):
      attnlab.attention(q, k, v, bias=jnp.zeros((3, 11, 13)))
    with pytest.raises(ValueError, match=r"head_mask"):
      attnlab.attention(q, k, v, head_mask=jnp.ones(3))
    with pytest.raises(ValueError, match=r"mask batch size"):
      attnlab.attention(q, k, v, mask=masks.ValidLengthMask(jnp.array([1, 2, 3])))

  def test_unknown_names(self):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=r"unknown mechanism 'nope'.*softmax"):
      attnlab.attention(q, k, v, mechanism="nope")
    with pytest.raises(ValueError, match=r"unknown implementation 'fast'"):
      attnlab.attention(q, k, v, implementation="fast")
    # Boolean arrays are accepted as masks (issue 7); other arrays are refused.
    with pytest.raises(TypeError, match=r"mask must be"):
      attnlab.attention(q, k, v, mask=np.ones((11, 13), np.float32))

  def test_list_mechanisms(self):
    names = attnlab.list_mechanisms()
    self.assertIn("softmax", names)
    self.assertIn("sigmoid", names)
    self.assertEqual(names, sorted(names))


class DispatchTest(parameterized.TestCase):

  def test_auto_skips_implementations_that_refuse_an_option(self):
    q, k, v = rand_qkv()
    # block_q is a chunked-only option: "auto" must pick chunked (xla does not take it),
    # and asking for xla explicitly names the argument.
    got = attnlab.attention(q, k, v, is_causal=True, block_q=4)
    chex.assert_trees_all_close(got, naive_attention(q, k, v, np.tril(np.ones((11, 13), bool))),
                                rtol=1e-7, atol=2e-5)
    with pytest.raises(ValueError, match=r"block_q"):
      attnlab.attention(q, k, v, implementation="xla", block_q=4)
    with pytest.raises(ValueError, match=r"no implementation .* supports.*not_an_option"):
      attnlab.attention(q, k, v, not_an_option=1)
