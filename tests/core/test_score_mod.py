"""score_mod and FunctionMask: the dense ("xla") and chunked implementations against a naive
attention written here (the modification applied as an explicit dense bias / temperature
computed with numpy), values and gradients, captured arrays included; FunctionMask block
summaries against a naive reduction of the dense mask, static and traced; composition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks

B, TQ, TK, H, K, D = 2, 11, 13, 4, 2, 8
OFF = 2  # queries at absolute positions OFF .. OFF + TQ - 1
RTOL, ATOL = 2e-4, 2e-5
CHUNKS = dict(block_q=4, block_k=8)  # ragged tiles: 11 = 4+4+3, 13 = 8+5


def rand(*shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


def qkv(seed=0):
  return rand(B, TQ, H, D, seed=seed), rand(B, TK, K, D, seed=seed + 1), rand(
      B, TK, K, D, seed=seed + 2)


def naive(q, k, v, logits_fn, allowed, normalizer="softmax"):
  """Dense attention written out: ``logits_fn(s [B,H,TQ,TK]) -> s``, bool ``allowed``."""
  kk, vv = (jnp.repeat(x, H // K, axis=2) for x in (k, v))
  s = jnp.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(D)
  s = logits_fn(s)
  if normalizer == "sigmoid":
    p = jax.nn.sigmoid(s - np.log(TK)) * allowed
  else:
    s = jnp.where(allowed, s, -1e30)
    p = jnp.exp(s - s.max(-1, keepdims=True)) * allowed
    den = p.sum(-1, keepdims=True)
    p = p / jnp.where(den == 0, 1.0, den)
  return jnp.einsum("bhij,bjhd->bihd", p, vv)


def causal(off=OFF):
  return jnp.asarray((np.arange(TQ)[:, None] + off) >= np.arange(TK)[None, :])


# Relative-position table: one row per (head, distance + TK); gathered densely by the naive path.
REL = np.arange(TQ)[:, None] + OFF - np.arange(TK)[None, :] + TK  # [TQ, TK] in [0, 2 TK)


def check_vjp(fn_impl, fn_ref, args, rtol=2e-3, atol=2e-4):
  ct = rand(*jax.eval_shape(fn_impl, *args).shape, seed=99)

  def run(fn):
    return jax.jit(lambda *a: (lambda y, f: (y, f(ct)))(*jax.vjp(fn, *a)))(*args)

  (y1, g1), (y2, g2) = run(fn_impl), run(fn_ref)
  chex.assert_trees_all_close(y1, y2, rtol=RTOL, atol=ATOL)
  for a, b in zip(g1, g2):
    chex.assert_tree_all_finite(a)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl,mechanism", [
    ("xla", "softmax"), ("chunked", "softmax"), ("chunked", "sigmoid"),
    pytest.param("xla", "sigmoid", marks=pytest.mark.slow)])
def test_relative_table_and_gate_with_grads(impl, mechanism):
  """``s * gate[h] + table[h, q - kv]``: per-head parameters and a table captured by the
  closure; gradients to q, k, v and both captured arrays, GQA, causal mask with q_offset."""
  q, k, v = qkv(1)
  table, gate = rand(H, 2 * TK + TQ + OFF, seed=5), rand(H, seed=6)
  opts = CHUNKS if impl == "chunked" else {}

  def impl_fn(q, k, v, table, gate):
    mod = lambda s, b, h, qi, ki: s * gate[h] + table[h, qi - ki + TK]
    return attnlab.attention(q, k, v, mechanism=mechanism, implementation=impl,
                             score_mod=mod, is_causal=True, q_offset=OFF, **opts)

  def ref_fn(q, k, v, table, gate):
    dense = table[:, REL][None]  # [1, H, TQ, TK]
    return naive(q, k, v, lambda s: s * gate[None, :, None, None] + dense, causal(),
                 mechanism)

  check_vjp(impl_fn, ref_fn, (q, k, v, table, gate))


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_per_query_temperature_and_document_ids(impl):
  """A per-(batch, query, head) temperature (float, differentiated) and per-token document ids
  (int, not differentiated) captured under jit."""
  q, k, v = qkv(2)
  tau = rand(B, TQ, H, seed=7)
  docs = jnp.asarray(np.sort(np.random.RandomState(3).randint(0, 3, (B, TK)), axis=1))
  opts = CHUNKS if impl == "chunked" else {}

  def impl_fn(q, k, v, tau):
    def mod(s, b, h, qi, ki):
      same = docs[b, qi] == docs[b, ki]
      return jnp.where(same, s * tau[b, qi, h], s - 1.0)
    return attnlab.attention(q, k, v, implementation=impl, score_mod=mod, **opts)

  def ref_fn(q, k, v, tau):
    qd = np.asarray(docs)[:, :TQ]
    same = jnp.asarray(qd[:, :, None] == np.asarray(docs)[:, None, :])[:, None]
    t = jnp.transpose(tau, (0, 2, 1))[..., None]
    return naive(q, k, v, lambda s: jnp.where(same, s * t, s - 1.0),
                 jnp.ones((TQ, TK), bool))

  check_vjp(impl_fn, ref_fn, (q, k, v, tau))


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_score_mod_after_softcap_bias_alibi(impl):
  """The order: cap(q.k * scale) + bias + ALiBi, then score_mod, then the mask."""
  q, k, v = qkv(3)
  bias = rand(1, H, TQ, TK, seed=8)
  slopes = jnp.asarray(attnlab.alibi_slopes(H))
  opts = CHUNKS if impl == "chunked" else {}
  got = jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, implementation=impl, score_mod=lambda s, b, h, qi, ki: s * s, softcap=2.0,
      bias=bias, alibi_slopes=slopes, is_causal=True, q_offset=OFF, **opts))(q, k, v)
  dist = np.abs(np.arange(TQ)[:, None] + OFF - np.arange(TK)[None, :])
  alibi = -np.asarray(slopes)[None, :, None, None] * dist

  def logits(s):
    s = 2.0 * jnp.tanh(s / 2.0) + bias + alibi
    return s * s
  chex.assert_trees_all_close(got, naive(q, k, v, logits, causal()), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_alibi_and_softcap_as_score_mods_equal_the_native_options(impl):
  q, k, v = qkv(8)
  slopes = attnlab.alibi_slopes(H)
  opts = dict(implementation=impl, is_causal=True, q_offset=OFF,
              **(CHUNKS if impl == "chunked" else {}))
  run = jax.jit(lambda q, k, v, **kw: attnlab.attention(q, k, v, **opts, **kw),
                static_argnames=("softcap",))
  from attnlab.core import common  # pylint: disable=g-import-not-at-top
  chex.assert_trees_all_close(
      jax.jit(lambda q, k, v: attnlab.attention(
          q, k, v, score_mod=common.alibi_score_mod(slopes), **opts))(q, k, v),
      run(q, k, v, alibi_slopes=jnp.asarray(slopes)), rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(
      jax.jit(lambda q, k, v: attnlab.attention(
          q, k, v, score_mod=common.softcap_score_mod(0.7), **opts))(q, k, v),
      run(q, k, v, softcap=0.7), rtol=RTOL, atol=ATOL)


def test_identity_and_none_agree_and_jit_once():
  q, k, v = qkv(4)
  f = jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, implementation="chunked", score_mod=lambda s, b, h, qi, ki: s, is_causal=True,
      **CHUNKS))
  g = jax.jit(lambda q, k, v: attnlab.attention(q, k, v, implementation="chunked",
                                                is_causal=True, **CHUNKS))
  chex.assert_trees_all_close(f(q, k, v), g(q, k, v), rtol=0, atol=1e-6)


def test_return_weights_with_score_mod():
  q, k, v = qkv(5)
  table = rand(H, 2 * TK + TQ + OFF, seed=5)
  mod = lambda s, b, h, qi, ki: s + table[h, qi - ki + TK]
  out, w = jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, implementation="chunked", score_mod=mod, return_weights=True, q_offset=OFF,
      is_causal=True, **CHUNKS))(q, k, v)
  ref_w = jax.nn.softmax(jnp.where(causal(), jnp.einsum(
      "bihd,bjhd->bhij", q, jnp.repeat(k, 2, 2)) / np.sqrt(D) + table[:, REL][None], -jnp.inf))
  chex.assert_trees_all_close(w, ref_w, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(out, jnp.einsum("bhij,bjhd->bihd", w, jnp.repeat(v, 2, 2)),
                              rtol=RTOL, atol=ATOL)


def test_bad_score_mods():
  q, k, v = qkv(6)
  with pytest.raises(TypeError, match="score_mod must be None or callable"):
    attnlab.attention(q, k, v, score_mod=3)
  with pytest.raises(ValueError, match="broadcastable to the score block"):
    attnlab.attention(q, k, v, implementation="xla",
                      score_mod=lambda s, b, h, qi, ki: jnp.zeros((3, 5)))
  with pytest.raises(TypeError, match="score_mod"):  # a mechanism without score_mod
    attnlab.attention(q, k, v, mechanism="decon_approx", score_mod=lambda s, *_: s)


# ---------------------------------------------------------------------------------------------
# FunctionMask.


def test_position_tables_read_at_padded_positions_stay_finite():
  """T=20 with 16-wide tiles pads queries and keys; a score_mod reading per-position tables
  with jnp.take (fill mode: NaN out of range) must not poison the chunked gradients. The
  reference is the dense path, which has no padding."""
  q, k, v = (rand(1, 20, 2, 8, seed=n) for n in range(3))
  w = jnp.linspace(0.5, 1.5, 20)

  def loss(impl):
    def f(q, k, v, w):
      mod = lambda s, b, h, qi, ki: s * jnp.take(w, ki) * jnp.take(w, qi)
      extra = {} if impl == "xla" else dict(block_q=16, block_k=16)
      out = attnlab.attention(q, k, v, is_causal=True, score_mod=mod, implementation=impl,
                              **extra)
      return jnp.sum(out * out)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
  got, want = loss("chunked")(q, k, v, w), loss("xla")(q, k, v, w)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in got)
  chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
  with pytest.raises(TypeError, match="floating-point scores, got dtype bool"):
    attnlab.attention(q, k, v, score_mod=lambda s, *_: s > 0)
  with pytest.raises(ValueError, match=r"slopes must have shape \[H\]"):
    attnlab.core.common.alibi_score_mod(jnp.ones((1, 2)))


def naive_summary(dense, bq, bk):
  b, tq, tk = dense.shape
  out = np.zeros((b, -(-tq // bq), -(-tk // bk)), np.int32)
  for bi in range(b):
    for i in range(out.shape[1]):
      for j in range(out.shape[2]):
        tile = dense[bi, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
        out[bi, i, j] = masks.FULL if tile.all() else (masks.PARTIAL if tile.any() else
                                                       masks.EMPTY)
  return out


DOCS = np.sort(np.random.RandomState(0).randint(0, 3, (B, TK)), axis=1)


def dense_of(kind, off=0):
  i = np.arange(TQ)[:, None] + off
  j = np.arange(TK)[None, :]
  if kind == "causal":
    return np.broadcast_to(j <= i, (1, TQ, TK))
  if kind == "prefix":  # prefix length 4 (bidirectional), causal after it
    return np.broadcast_to((j <= i) | (j < 4), (1, TQ, TK))
  if kind == "document":  # same document and causal
    return (DOCS[:, :TQ, None] == DOCS[:, None, :]) & (j <= i)[None]
  raise ValueError(kind)


def mask_fn(kind, docs=None):
  return {
      "causal": lambda b, h, qi, ki: ki <= qi,
      "prefix": lambda b, h, qi, ki: (ki <= qi) | (ki < 4),
      "document": lambda b, h, qi, ki: (docs[b, qi] == docs[b, ki]) & (ki <= qi),
  }[kind]


@pytest.mark.parametrize("kind", ["causal", "prefix", "document"])
@pytest.mark.parametrize("blocks", [(4, 4), (3, 8)])
def test_function_mask_summary_static(kind, blocks):
  m = masks.FunctionMask(mask_fn(kind, jnp.asarray(DOCS))).bind_batch(B)
  assert not m.is_traced()
  got = m.block_summary(TQ, TK, *blocks)
  assert isinstance(got, np.ndarray)  # static: known at trace time
  want = naive_summary(dense_of(kind), *blocks)
  np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)
  np.testing.assert_array_equal(np.broadcast_to(m.dense(TQ, TK), (want.shape[0], TQ, TK)),
                                np.broadcast_to(dense_of(kind), (want.shape[0], TQ, TK)))


def test_function_mask_summary_traced_under_jit():
  def summary(docs):
    m = masks.FunctionMask(mask_fn("document", docs)).bind_batch(B)
    assert m.is_traced()
    return m.block_summary(TQ, TK, 4, 4)
  got = jax.jit(summary)(jnp.asarray(DOCS))
  np.testing.assert_array_equal(np.asarray(got), naive_summary(dense_of("document"), 4, 4))


def test_function_mask_composes_and_follows_q_offset():
  win = masks.SlidingWindowMask(3)
  m = masks.FunctionMask(mask_fn("prefix")) & win
  want = dense_of("prefix", OFF) & np.asarray(win.align_q_offset(OFF).dense(TQ, TK))
  m = m.align_q_offset(OFF)
  np.testing.assert_array_equal(np.asarray(m.dense(TQ, TK)), want)
  np.testing.assert_array_equal(m.block_summary(TQ, TK, 4, 4), naive_summary(want, 4, 4))
  m2 = (masks.FunctionMask(mask_fn("causal")) | masks.FunctionMask(
      lambda b, h, qi, ki: ki < 4)).align_q_offset(OFF)
  np.testing.assert_array_equal(m2.block_summary(TQ, TK, 4, 4),
                                naive_summary(dense_of("prefix", OFF), 4, 4))


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_function_mask_in_attention_equals_array_mask(impl):
  q, k, v = qkv(7)
  opts = CHUNKS if impl == "chunked" else {}
  fm = jax.jit(lambda q, k, v, docs: attnlab.attention(
      q, k, v, implementation=impl, mask=masks.FunctionMask(mask_fn("document", docs)),
      **opts))(q, k, v, jnp.asarray(DOCS))
  want = naive(q, k, v, lambda s: s, jnp.asarray(dense_of("document"))[:, None])
  chex.assert_trees_all_close(fm, want, rtol=RTOL, atol=ATOL)


def test_function_mask_bad_input():
  with pytest.raises(TypeError, match="mask_fn must be callable"):
    masks.FunctionMask(3)
  with pytest.raises(TypeError, match="shared by all heads"):
    masks.FunctionMask(lambda b, h, qi, ki: ki <= qi + h).dense(3, 3)
  with pytest.raises(TypeError, match="must return booleans"):
    masks.FunctionMask(lambda b, h, qi, ki: ki - qi).dense(3, 3)


# ---------------------------------------------------------------------------------------------
# The README's examples.


@pytest.mark.slow  # eager op-by-op dispatch: ~40 s on 2 cores; the pieces are tested above
def test_readme_examples_run_and_match_the_built_in_forms():
  import os  # pylint: disable=g-import-not-at-top
  readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
  block = readme.split("<!-- score_mod examples: run by tests/core/test_score_mod.py -->")[1]
  code = block.split("```python\n")[1].split("```")[0]
  ns = {"jax": jax, "jnp": jnp, "attnlab": attnlab, "masks": masks}
  exec(code, ns)  # pylint: disable=exec-used
  q, k, v = ns["q"], ns["k"], ns["v"]
  t = q.shape[1]
  run = jax.jit(lambda mask, **kw: attnlab.attention(q, k, v, mask=mask, implementation="xla",
                                                     **kw))
  chex.assert_trees_all_close(ns["out_alibi"], run(masks.CausalMask(), alibi_slopes=jnp.asarray(
      attnlab.alibi_slopes(8))), rtol=RTOL, atol=ATOL)
  want = jax.grad(lambda table: attnlab.attention(
      q, k, v, mechanism="t5_relative", implementation="xla", rel_bias=table, num_buckets=32,
      max_distance=128, bidirectional=False, is_causal=True).sum())(jnp.zeros((32, 8)))
  chex.assert_trees_all_close(ns["d_table"], want, rtol=1e-3, atol=1e-3)
  doc = ns["doc"]
  chex.assert_trees_all_close(ns["out_doc"], run(masks.SegmentMask(doc) & masks.CausalMask()),
                              rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(ns["out_prefix"], run(masks.PrefixLMMask(64)), rtol=RTOL,
                              atol=ATOL)
  assert t == 256


@pytest.mark.parametrize("impl", ["chunked", "pallas"])
def test_captured_integer_tracers_under_jit_grad_scan_checkpoint(impl):
  """Document ids captured (as traced integers) by a score_mod and by a FunctionMask, under
  ``jit(grad)`` of a ``lax.scan`` over ``jax.checkpoint``-ed layers: every captured array is
  hoisted, so nothing leaks as a closed-over tracer; equal to the dense xla path."""
  q, k, v = qkv(seed=40)
  table = rand(H, seed=41)
  docs = jnp.asarray(np.arange(TK) // 7, jnp.int32)

  def loss(q, docs, table, impl, use_mask):
    def layer(x, _):
      if use_mask:
        m = masks.FunctionMask(lambda b, h, qi, ki: (docs[qi] == docs[ki]) & (qi >= ki))
        return attnlab.attention(x, k, v, mask=m, implementation=impl), None
      mod = lambda s, b, h, qi, ki: jnp.where(docs[qi] == docs[ki], s * table[h], -jnp.inf)
      return attnlab.attention(x, k, v, score_mod=mod, is_causal=True,
                               implementation=impl), None
    out, _ = jax.lax.scan(jax.checkpoint(layer), q, None, length=2)
    return (out ** 2).sum()

  for use_mask in ([False] if impl == "pallas" else [False, True]):
    grad = jax.jit(jax.grad(loss, argnums=(0, 2)), static_argnums=(3, 4))
    got, want = grad(q, docs, table, impl, use_mask), grad(q, docs, table, "xla", use_mask)
    for a, b in zip(got, want):
      chex.assert_tree_all_finite(a)
      chex.assert_trees_all_close(a, b, rtol=2e-3, atol=2e-4)


def test_bfloat16_captured_array_gradient_accumulates_in_float32():
  """A bf16 captured array's gradient sums many tiles (32 x 32 blocks of 8, causal). The
  setting makes every tile's contribution positive (sigmoid attention, v and the cotangent
  all ones, a non-negative distance weight), so the float32 reference has no cancellation:
  each tile's own cotangent is rounded to bf16 (the array's dtype, ~0.4%), and summing the
  tiles in float32 keeps the total within that. Summed in bf16 (the old behaviour) the total
  was off by several percent once the sum dwarfs each tile's share; 1e-2 separates them."""
  r = np.random.RandomState(0)
  t, h = 256, 2
  q, k = (jnp.asarray(r.standard_normal((1, t, h, D)), jnp.float32) for _ in range(2))
  v, ct = jnp.ones((1, t, h, D), jnp.float32), jnp.ones((1, t, h, D), jnp.float32)
  table = jnp.asarray([0.7, -1.3], jnp.bfloat16)

  def loss(table, impl, **kw):
    mod = lambda s, b, hh, qi, ki: s + table[hh].astype(jnp.float32) * (qi - ki) * 0.05
    return (attnlab.attention(q, k, v, mechanism="sigmoid", score_mod=mod, is_causal=True,
                              implementation=impl, **kw) * ct).sum()

  want = jax.grad(loss)(table.astype(jnp.float32), "xla")
  got = jax.jit(lambda tb: jax.grad(loss)(tb, "chunked", block_q=8, block_k=8))(table)
  assert got.dtype == jnp.bfloat16
  chex.assert_trees_all_close(got.astype(jnp.float32), want, rtol=1e-2)
