"""score_mod traced into the Pallas flash kernels (interpret mode on CPU): softmax and
sigmoid with a captured relative table and per-head gate against a naive dense attention
written here (values and gradients, the captured arrays included), both drivers; every
mechanism ported onto the score_mod path against its dense reference (the "xla"
implementation, itself tested against naive formulas in tests/core/mechanisms)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab

from _kernel_helpers import FAST_COMPILE  # noqa: I100

B, TQ, TK, H, K, D = 1, 21, 21, 4, 2, 8
OFF = 3
TILES = dict(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)
REL = np.arange(TQ)[:, None] + OFF - np.arange(TK)[None, :] + TK  # [TQ, TK] in [0, 2 TK)


def rand(*shape, seed=0, scale=1.0):
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape) * scale, jnp.float32)


def value_and_vjp(fn, args, fast_compile=False):
  """(value, vjp) in one compiled program; ``fast_compile`` (optimisation level 0, for the
  interpret-mode kernels' large XLA programs, see _kernel_helpers.FAST_COMPILE)."""
  ct = rand(*jax.eval_shape(fn, *args).shape, seed=99)
  run = jax.jit(lambda *a: (lambda y, f: (y, f(ct)))(*jax.vjp(fn, *a)))
  return run.lower(*args).compile(FAST_COMPILE if fast_compile else None)(*args)


def assert_same(got, want, rtol=2e-4, atol=2e-5):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    chex.assert_tree_all_finite(a)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def naive(q, k, v, logits_fn, normalizer):
  kk, vv = (jnp.repeat(x, H // K, axis=2) for x in (k, v))
  s = logits_fn(jnp.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(D))
  allowed = jnp.asarray(REL >= TK)  # causal at offset OFF
  if normalizer == "sigmoid":
    p = jax.nn.sigmoid(s - np.log(TK)) * allowed
  else:
    s = jnp.where(allowed, s, -1e30)
    p = jnp.exp(s - s.max(-1, keepdims=True)) * allowed
    p = p / p.sum(-1, keepdims=True)
  return jnp.einsum("bhij,bjhd->bihd", p, vv)


@pytest.mark.parametrize("backend,mechanism", [
    ("triton", "softmax"), pytest.param("triton", "sigmoid", marks=pytest.mark.slow),
    pytest.param("mosaic", "softmax", marks=pytest.mark.slow),
    pytest.param("mosaic", "sigmoid", marks=pytest.mark.slow)])
def test_kernel_score_mod_vs_naive(backend, mechanism):
  q, k, v = rand(B, TQ, H, D, seed=1), rand(B, TK, K, D, seed=2), rand(B, TK, K, D, seed=3)
  table, gate = rand(H, 2 * TK + TQ + OFF, seed=4), rand(H, seed=5)

  def kernel(q, k, v, table, gate):
    mod = lambda s, b, h, qi, ki: s * gate[h] + table[h, qi - ki + TK]
    return attnlab.attention(q, k, v, mechanism=mechanism, implementation="pallas",
                             score_mod=mod, is_causal=True, q_offset=OFF,
                             kernel_backend=backend, **TILES)

  def ref(q, k, v, table, gate):
    return naive(q, k, v, lambda s: s * gate[None, :, None, None] + table[:, REL][None],
                 mechanism)

  args = (q, k, v, table, gate)
  assert_same(value_and_vjp(kernel, args, True), value_and_vjp(ref, args))


@pytest.mark.slow
def test_kernel_identity_score_mod_equals_plain_kernel():
  q, k, v = rand(B, TQ, H, D, seed=6), rand(B, TK, K, D, seed=7), rand(B, TK, K, D, seed=8)
  run = lambda **kw: value_and_vjp(lambda q, k, v: attnlab.attention(
      q, k, v, implementation="pallas", is_causal=True, **TILES, **kw), (q, k, v), True)
  assert_same(run(score_mod=lambda s, *_: s), run(), rtol=0, atol=1e-6)


def _cases():
  r = lambda *s, seed: rand(*s, seed=seed, scale=0.5)
  m = 3
  return {
      "deberta": (dict(q_r=r(2 * m, H, D, seed=10), k_r=r(2 * m, H, D, seed=11)),
                  dict(max_distance=m)),
      "rcmha": (dict(r=r(2 * m + 1, H, D, seed=12), u=r(H, D, seed=13), w=r(H, D, seed=14)),
                dict(max_distance=m)),
      "selective_ssa": (dict(q_temperature=1 + r(B, TQ, H, seed=15),
                             v_temperature=1 + r(B, TK, K, seed=16),
                             position_strength=jnp.full((H,), 0.3)), {}),
      "gpsa": (dict(pos_weights=r(H, 2, seed=17), gate=r(H, seed=18)), {}),
      "decon_approx": ({}, {}),
      "decon_nonapprox": ({}, {}),
      "t5_relative": (dict(rel_bias=r(8, H, seed=19)), dict(num_buckets=8, max_distance=10)),
  }


# Two mechanisms cover the kernel paths (captured per-position tables with their gradients,
# two calls combined); the others are the same plumbing and run with -m slow.
FAST = ("deberta", "gpsa")


@pytest.mark.parametrize("mechanism", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in _cases()])
def test_ported_mechanism_pallas_equals_dense_reference(mechanism):
  arrays, static = _cases()[mechanism]
  q, k, v = rand(B, TQ, H, D, seed=20), rand(B, TK, K, D, seed=21), rand(B, TK, K, D, seed=22)
  names = list(arrays)
  extra = {} if mechanism == "decon_nonapprox" else dict(q_offset=OFF)

  def run(impl, opts):
    def fn(q, k, v, *a):
      return attnlab.attention(q, k, v, mechanism=mechanism, implementation=impl,
                               is_causal=True, **dict(zip(names, a)), **static, **extra,
                               **opts)
    return fn

  q_ = q if mechanism != "decon_nonapprox" else rand(B, TK, H, D, seed=23)
  args = (q_, k, v, *arrays.values())
  assert_same(value_and_vjp(run("pallas", TILES), args, True),
              value_and_vjp(run("xla", {}), args))


def test_pallas_registered_for_ported_mechanisms_and_not_auto_on_cpu():
  for name in _cases():
    impls = attnlab.get_mechanism(name).implementations
    assert {"xla", "chunked", "pallas"} <= set(impls), name
    assert impls["pallas"].auto_platforms == ("gpu", "tpu")
  q, k, v = rand(B, TQ, H, D), rand(B, TK, K, D), rand(B, TK, K, D)
  with pytest.raises(TypeError, match="block_qq"):
    attnlab.attention(q, k, v, mechanism="t5_relative", implementation="pallas", block_qq=16)


def _ref_reads(jaxpr, shape):
  """Shapes of every in-kernel read (``get``) of a ref of ``shape``, in all nested jaxprs."""
  from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
  out = []

  def walk(j):
    for e in j.eqns:
      if e.primitive.name == "get" and tuple(e.invars[0].aval.shape) == shape:
        out.append(tuple(e.outvars[0].aval.shape))
      for p in e.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          if isinstance(sub, jex_core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jex_core.Jaxpr):
            walk(sub)
  walk(jaxpr)
  return out


def test_captured_arrays_are_read_by_tile_never_whole():
  """A captured [TQ, TK] bias and a [distance, H] table are read inside the three kernels only
  at the elements of the tile (``[bq, bk]`` index arrays), never whole; values and gradients
  (the captured arrays' included) equal a naive dense attention."""
  tq, tk = 40, 24  # bigger than one 16 x 16 tile, so a whole read would show
  q, k, v = rand(B, tq, H, D, seed=31), rand(B, tk, K, D, seed=32), rand(B, tk, K, D, seed=33)
  bias2d, table = rand(tq, tk, seed=34), rand(tq + tk, H, seed=35)
  rel = np.arange(tq)[:, None] - np.arange(tk)[None, :] + tk  # [tq, tk] in [1, tq + tk)

  def run(q, k, v, bias2d, table):
    mod = lambda s, b, h, qi, ki: s + bias2d[qi, ki] + table[qi - ki + tk, h]
    return attnlab.attention(q, k, v, implementation="pallas", score_mod=mod, **TILES)

  def ref(q, k, v, bias2d, table):
    kk, vv = (jnp.repeat(x, H // K, axis=2) for x in (k, v))
    s = jnp.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(D)
    s = s + bias2d[None, None] + jnp.moveaxis(table[rel], -1, 0)[None]
    return jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(s, axis=-1), vv)

  args = (q, k, v, bias2d, table)
  assert_same(value_and_vjp(run, args, True), value_and_vjp(ref, args))
  grad_jaxpr = jax.make_jaxpr(jax.grad(lambda *a: run(*a).sum(), argnums=(0, 1, 2)))(*args)
  bias_reads, table_reads = _ref_reads(grad_jaxpr.jaxpr, (tq, tk)), _ref_reads(
      grad_jaxpr.jaxpr, (tq + tk, H))
  assert bias_reads and table_reads  # the fwd, dq and dkv kernels each read both
  for shape in bias_reads:
    assert shape == (16, 16), shape  # the tile's elements
  for shape in table_reads:
    assert shape != (tq + tk, H) and int(np.prod(shape)) <= 16 * 16, shape


def test_function_mask_in_the_kernels():
  """A FunctionMask (per-batch document ids it captures, ``&`` a causal mask, at a q_offset)
  runs in the kernels: values and gradients equal a naive dense attention whose mask is built
  with numpy here; the forward visits exactly the tiles the numpy mask leaves non-empty; the
  captured ids are read by index, never whole."""
  from attnlab import masks  # pylint: disable=g-import-not-at-top
  from attnlab.kernels.flash import flash_attention  # pylint: disable=g-import-not-at-top
  b, tq, tk, off = 2, 40, 48, 8
  docs_np = np.stack([np.arange(tk) // 12, np.minimum(np.arange(tk) // 20, 1)])  # [B, TK]
  dense = ((docs_np[:, off:off + tq, None] == docs_np[:, None, :])
           & (np.arange(tq)[:, None] + off >= np.arange(tk)[None, :]))  # [B, TQ, TK]
  q, k, v = rand(b, tq, H, D, seed=41), rand(b, tk, K, D, seed=42), rand(b, tk, K, D, seed=43)
  docs = jnp.asarray(docs_np, jnp.int32)

  def mask_of(docs):
    same_doc = masks.FunctionMask(lambda bi, h, qi, ki: docs[bi, qi] == docs[bi, ki])
    return same_doc & masks.CausalMask()

  def run(q, k, v, docs):
    return attnlab.attention(q, k, v, mask=mask_of(docs), q_offset=off, implementation="pallas",
                             **TILES)

  def ref(q, k, v, docs):
    kk, vv = (jnp.repeat(x, H // K, axis=2) for x in (k, v))
    s = jnp.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(D)
    s = jnp.where(dense[:, None], s, -jnp.inf)
    return jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(s, axis=-1), vv)

  fn3, ref3 = (lambda q, k, v, f=f: f(q, k, v, docs) for f in (run, ref))
  assert_same(value_and_vjp(fn3, (q, k, v), True), value_and_vjp(ref3, (q, k, v)))

  _, counts = jax.jit(lambda q, k, v, docs: flash_attention(
      q, k, v, mask=masks.bind_batch(mask_of(docs), b).align_q_offset(off), q_offset=off,
      debug_counts=True, **TILES))(q, k, v, docs)
  nq, nk = -(-tq // 16), -(-tk // 16)
  padded = np.zeros((b, nq * 16, nk * 16), bool)
  padded[:, :tq, :tk] = dense
  any_ = padded.reshape(b, nq, 16, nk, 16).any(axis=(2, 4))  # [B, nq, nk] non-empty tiles
  visits = np.asarray(counts).sum(-1)  # [B, H, nq]: FULL + PARTIAL tiles visited
  for bi in range(b):
    chex.assert_trees_all_equal(visits[bi, 0], any_[bi].sum(-1))
  assert any_.sum() < b * nq * nk  # something was skipped

  reads = _ref_reads(jax.make_jaxpr(fn3)(q, k, v).jaxpr, (b, tk))
  assert reads and all(s in ((16, 1), (1, 16)) for s in reads), reads  # q / kv ids of a tile
