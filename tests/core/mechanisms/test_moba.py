"""MoBA ("moba"): every implementation against a naive reference written here (the routing as
a numpy loop over queries and blocks -> a dense per-head mask -> ``jax.nn.dot_product_attention``),
values and gradients; top-k = all blocks is causal attention; routing is causal; KV-cache
decoding through ``MultiHeadAttention``; no ``[T, T]`` intermediate on the block-sparse path.

``routing="block"`` on the tile tables ("chunked" and "pallas" in interpret mode): the same
checks against a naive block router written here, plus the tiles visited: the Pallas forward
kernel's tile counter equals the selected (query block, key block) pairs counted by the naive
router, and NaN values in an unselected key block never reach an output (a visited tile would
multiply them by a zero probability: NaN)."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import masks
from attnlab.core import chunked
from attnlab.core.mechanisms import moba
from attnlab.nn import attention as A

from numeric_checks import assert_close, rand

# "xla" is tied to "chunked" by tests/core/test_contract.py (test_vs_xla); its own naive
# comparisons run in the slow suite.
IMPLS = ("chunked", pytest.param("xla", marks=pytest.mark.slow))


def naive_route(q, k, block, top_k, causal, kv_len=None):
  """bool [B, H, Tq, Tk]: the keys each query attends to (loops; float64)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  b, tq, h, _ = q.shape
  tk, kh = k.shape[1], k.shape[2]
  kv_len = [tk] * b if kv_len is None else kv_len
  nb = -(-tk // block)
  out = np.zeros((b, h, tq, tk), bool)
  for bi in range(b):
    for hi in range(h):
      kk = k[bi, :, hi // (h // kh)]
      for i in range(tq):
        vis = np.arange(tk) < kv_len[bi]
        if causal:
          vis &= np.arange(tk) <= i
        own = min(i // block, nb - 1)
        scores = {}
        for j in range(nb):
          keys = [t for t in range(j * block, min((j + 1) * block, tk)) if vis[t]]
          if keys:
            scores[j] = np.inf if j == own else float(q[bi, i, hi] @ kk[keys].mean(0))
        chosen = sorted(scores, key=lambda j: -scores[j])[:top_k]
        for j in chosen:
          out[bi, hi, i, j * block:(j + 1) * block] = vis[j * block:(j + 1) * block]
  return out


def naive_attention(q, k, v, allowed):
  h, kh = q.shape[2], k.shape[2]
  rep = lambda x: jnp.repeat(x, h // kh, axis=2)
  out = jax.nn.dot_product_attention(q, rep(k), rep(v), mask=jnp.asarray(allowed))
  # jax.nn averages over all keys on a fully masked row; attnlab's contract gives zeros.
  return jnp.where(jnp.any(jnp.asarray(allowed), -1).transpose(0, 2, 1)[..., None], out, 0.0)


def qkv(seed, b=2, t=37, h=4, kh=2, d=8):
  return (jnp.asarray(rand(b, t, h, d, seed=seed)), jnp.asarray(rand(b, t, kh, d, seed=seed + 1)),
          jnp.asarray(rand(b, t, kh, d, seed=seed + 2)))


def fast_jit(fn, *args):
  """Compiled at XLA optimisation level 0: about half the compile time on CPU, the same
  float32 results at these tolerances (as tests/core/contract.py)."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


def run(impl, q, k, v, **kw):
  return attnlab.attention(q, k, v, mechanism="moba", implementation=impl, **kw)


def check_values_and_grads(fn, q, k, v, allowed):
  ct = jnp.asarray(rand(*q.shape, seed=99))
  loss = lambda f: (lambda *a: jnp.sum(f(*a) * ct))
  vg = jax.value_and_grad(lambda *a: (loss(fn)(*a), fn(*a)), (0, 1, 2), has_aux=True)
  (_, got), got_g = fast_jit(vg, q, k, v)(q, k, v)
  ref = lambda q, k, v: naive_attention(q, k, v, allowed)
  rvg = jax.value_and_grad(lambda *a: (loss(ref)(*a), ref(*a)), (0, 1, 2), has_aux=True)
  (_, want), want_g = jax.jit(rvg)(q, k, v)
  assert_close(got, want)
  for a, b in zip(got_g, want_g):
    assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_moba_causal_vs_naive(impl):
  """Causal, GQA, Tk not a multiple of the block, top-k smaller than the number of blocks."""
  q, k, v = qkv(0)
  allowed = naive_route(q, k, 8, 3, causal=True)
  assert not np.all(allowed == np.tril(np.ones((37, 37), bool)))  # routing drops blocks
  check_values_and_grads(lambda q, k, v: run(impl, q, k, v, is_causal=True, block_size=8,
                                             top_k=3), q, k, v, allowed)


@pytest.mark.parametrize("impl", IMPLS)
def test_moba_bidirectional_and_padding_vs_naive(impl):
  """No causal mask: every block is a candidate; padded keys (lengths) are not visible and do
  not enter the gate's block means."""
  q, k, v = qkv(10, t=29)
  lengths = [20, 29]
  allowed = naive_route(q, k, 6, 2, causal=False, kv_len=lengths)
  mask = masks.ValidLengthMask(jnp.asarray(lengths))
  check_values_and_grads(lambda q, k, v: run(impl, q, k, v, mask=mask, block_size=6, top_k=2),
                         q, k, v, allowed)


@pytest.mark.parametrize("impl", IMPLS)
def test_top_k_all_blocks_is_causal_attention(impl):
  q, k, v = qkv(20, t=40)
  got = fast_jit(lambda q, k, v: run(impl, q, k, v, is_causal=True, block_size=8, top_k=5),
                 q, k, v)(q, k, v)
  want = attnlab.attention(q, k, v, is_causal=True, implementation="xla")
  assert_close(got, want)


@pytest.mark.parametrize("impl", IMPLS)
def test_routing_is_causal(impl):
  """Changing token p (its q, k and v) leaves every output before p unchanged, exactly."""
  q, k, v = qkv(30, t=48)
  p = 29
  q2, k2, v2 = (x.at[:, p:].add(5.0) for x in (q, k, v))
  fn = fast_jit(lambda q, k, v: run(impl, q, k, v, is_causal=True, block_size=8, top_k=2),
                q, k, v)
  a, b = fn(q, k, v), fn(q2, k2, v2)
  chex.assert_trees_all_equal(a[:, :p], b[:, :p])
  assert float(jnp.abs(a[:, p:] - b[:, p:]).max()) > 1e-3


def test_block_sparse_path_has_no_quadratic_intermediate():
  """Every intermediate of the "chunked" forward and backward is smaller than [Tq, Tk]."""
  t = 256
  q, k, v = qkv(40, b=1, t=t, h=2, kh=1, d=4)
  fn = lambda q, k, v: jnp.sum(run("chunked", q, k, v, is_causal=True, block_size=16,
                                   top_k=2) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(fn, (0, 1, 2)))(q, k, v)

  def sizes(jx):
    for eqn in jx.eqns:
      for var in eqn.outvars:
        yield int(np.prod(var.aval.shape))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from sizes(sub)
  assert max(sizes(jaxpr.jaxpr)) < t * t


@pytest.mark.slow
def test_kv_cache_decoding_matches_full_forward():
  """A causal MultiHeadAttention with mechanism="moba": decoding token by token with the KV
  cache (traced q_offset, cache-length mask: the dense-gate path) gives the full forward."""
  mod = A.MultiHeadAttention(16, 2, mechanism="moba", causal=True, rngs=nnx.Rngs(0),
                             mechanism_kwargs={"block_size": 4, "top_k": 2})
  x = jnp.asarray(rand(1, 14, 16, seed=50))
  full = mod(x)
  mod.init_cache(1, 16)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = jnp.concatenate([step(mod, x[:, i:i + 1]) for i in range(14)], axis=1)
  assert_close(got, full)


def test_bad_arguments():
  q, k, v = qkv(0, t=8)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    moba.moba_attention(q, k, v, block_size=0)
  with pytest.raises(ValueError, match="top_k must be a positive int"):
    moba.moba_reference(q, k, v, top_k=-1)
  with pytest.raises(ValueError, match="'chunked'.*bias"):
    run("chunked", q, k, v, bias=jnp.zeros((8, 8)))
  assert "moba" in attnlab.list_mechanisms("attention")
  assert "arXiv 2502.13189" in attnlab.get_mechanism("moba").paper


# ------------------------------------------------------------------------------------------
# routing="block": the selection as per-(batch, head) tile tables (chunked and pallas).


def naive_block_select(q, k, block, top_k, causal, kv_len=None, off=0, visible=None):
  """bool [B, H, NG, NB]: key blocks chosen per query block by its first query (loops);
  query ``i`` sits at position ``off + i`` (``off`` a multiple of ``block``); ``visible``
  [Tq, Tk]: a further mask (a block no query of the group sees is no candidate)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  b, tq, h, _ = q.shape
  tk, kh = k.shape[1], k.shape[2]
  kv_len = [tk] * b if kv_len is None else kv_len
  nb, ng = -(-tk // block), -(-tq // block)
  out = np.zeros((b, h, ng, nb), bool)
  for bi in range(b):
    for hi in range(h):
      kk = k[bi, :, hi // (h // kh)]
      for g in range(ng):
        rows = range(g * block, min((g + 1) * block, tq))
        scores = {}
        for j in range(nb):
          keys = range(j * block, min((j + 1) * block, tk))
          seen = any(t < kv_len[bi] and (not causal or t <= off + i)
                     and (visible is None or visible[i, t]) for i in rows for t in keys)
          if seen:
            mean = kk[list(keys)].mean(0)
            own = min(off // block + g, nb - 1)
            scores[j] = np.inf if j == own else float(q[bi, g * block, hi] @ mean)
        for j in sorted(scores, key=lambda j: -scores[j])[:top_k]:
          out[bi, hi, g, j] = True
  return out


def naive_block_allowed(sel, tq, tk, block, causal, kv_len=None, off=0):
  """bool [B, H, Tq, Tk] from the per-block selection and the mask."""
  b = sel.shape[0]
  kv_len = [tk] * b if kv_len is None else kv_len
  i, t = np.arange(tq)[:, None], np.arange(tk)[None, :]
  out = sel[:, :, i // block, t // block]
  vis = (t < np.asarray(kv_len)[:, None, None]) & ((t <= off + i) if causal else True)
  return out & vis[:, None]


TILE_IMPLS = ("chunked", "pallas", pytest.param("xla", marks=pytest.mark.slow))


@pytest.mark.parametrize("impl", TILE_IMPLS)
def test_block_routing_causal_vs_naive(impl):
  """Causal, GQA, Tk not a multiple of the block, top-k < blocks: values and grads."""
  q, k, v = qkv(60, t=40, d=8)
  sel = naive_block_select(q, k, 16, 2, causal=True)
  assert not sel.all()  # routing drops blocks
  allowed = naive_block_allowed(sel, 40, 40, 16, causal=True)
  check_values_and_grads(lambda q, k, v: run(impl, q, k, v, is_causal=True, block_size=16,
                                             top_k=2, routing="block"), q, k, v, allowed)


@pytest.mark.parametrize("impl", TILE_IMPLS)
def test_block_routing_lengths_bidirectional_vs_naive(impl):
  """No causal mask, padded keys (lengths, per batch element): every visible block is a
  candidate, later blocks included; forward values."""
  q, k, v = qkv(70, t=48, d=8)
  lengths = [30, 48]
  sel = naive_block_select(q, k, 16, 2, causal=False, kv_len=lengths)
  allowed = naive_block_allowed(sel, 48, 48, 16, causal=False, kv_len=lengths)
  mask = masks.ValidLengthMask(jnp.asarray(lengths))
  got = fast_jit(lambda q, k, v: run(impl, q, k, v, mask=mask, block_size=16, top_k=2,
                                     routing="block"), q, k, v)(q, k, v)
  assert_close(got, naive_attention(q, k, v, allowed))


def test_block_routing_with_a_function_mask_single_example():
  """A FunctionMask (document ids) with several heads and batch 1 on the tile path (heads
  folded into the batch leave its batch index at 0): equal to the naive routed attention
  restricted to the same documents."""
  q, k, v = qkv(80, b=1, t=48, d=8)
  docs = np.arange(48) // 20
  same_doc = docs[:, None] == docs[None, :]
  mask = masks.FunctionMask(lambda b, h, qi, ki: jnp.asarray(docs)[qi] == jnp.asarray(docs)[ki])
  sel = naive_block_select(q, k, 16, 2, causal=True, visible=same_doc)
  allowed = naive_block_allowed(sel, 48, 48, 16, causal=True) & same_doc
  got = fast_jit(lambda q, k, v: run("chunked", q, k, v, mask=mask & masks.CausalMask(),
                                     block_size=16, top_k=2, routing="block"), q, k, v)(q, k, v)
  assert_close(got, naive_attention(q, k, v, allowed))


def test_block_routing_with_a_per_example_function_mask():
  """A FunctionMask whose document ids differ per example, with batch 2 and 4 heads folded
  into the batch: each (example, head) reads its own example's ids (chunked and pallas
  values; chunked gradients with the ids traced). Reference: the naive router per example
  with that example's documents."""
  q, k, v = qkv(81, b=2, t=48, d=8)
  docs = np.stack([np.arange(48) // 20, np.arange(48) // 12])
  ids = jnp.asarray(docs)
  mask = masks.FunctionMask(lambda b, h, qi, ki: ids[b, qi] == ids[b, ki])
  allowed = []
  for bi in range(2):
    same_doc = docs[bi][:, None] == docs[bi][None, :]
    sel = naive_block_select(q[bi:bi + 1], k[bi:bi + 1], 16, 2, causal=True,
                             visible=same_doc)
    allowed.append(naive_block_allowed(sel, 48, 48, 16, causal=True)[0] & same_doc)
  allowed = np.stack(allowed)
  assert not np.array_equal(allowed[0], allowed[1])
  for impl in ("chunked", "pallas"):
    got = fast_jit(lambda q, k, v: run(impl, q, k, v, mask=mask & masks.CausalMask(),
                                       block_size=16, top_k=2, routing="block"),
                   q, k, v)(q, k, v)
    assert_close(got, naive_attention(q, k, v, allowed))

  def traced(q, k, v, ids):  # the ids a jit argument (traced inside the custom_vjp)
    fm = masks.FunctionMask(lambda b, h, qi, ki: ids[b, qi] == ids[b, ki])
    return run("chunked", q, k, v, mask=fm & masks.CausalMask(), block_size=16, top_k=2,
               routing="block")
  ct = jnp.asarray(rand(*q.shape, seed=99))
  grads = lambda f, *a: jax.grad(lambda q, k, v: jnp.sum(f(q, k, v, *a) * ct), (0, 1, 2))
  got = fast_jit(lambda q, k, v, i: grads(traced, i)(q, k, v), q, k, v, ids)(q, k, v, ids)
  want = jax.jit(grads(lambda q, k, v: naive_attention(q, k, v, allowed)))(q, k, v)
  for a, b in zip(got, want):
    assert_close(a, b)


# The offset enters through the shared router and tile states (checked on pallas) and the
# mask; the chunked case adds only a compile, so it runs in the slow suite.
@pytest.mark.parametrize("impl", (pytest.param("chunked", marks=pytest.mark.slow), "pallas"))
def test_block_routing_prefill_chunk_with_offset(impl):
  """A block-aligned prefill chunk: 32 queries at positions 32..63 over 64 cached keys."""
  q, _, _ = qkv(120, t=32, d=8)
  _, k, v = qkv(121, t=64, d=8)
  sel = naive_block_select(q, k, 16, 2, causal=True, off=32)
  allowed = naive_block_allowed(sel, 32, 64, 16, causal=True, off=32)
  got = fast_jit(lambda q, k, v: run(impl, q, k, v, is_causal=True, q_offset=32,
                                     block_size=16, top_k=2, routing="block"), q, k, v)(q, k, v)
  assert_close(got, naive_attention(q, k, v, allowed))


@pytest.mark.parametrize("impl,routing", [
    ("chunked", "block"), ("pallas", "block"),
    # token routing with every block selected runs the same kernels (contract: test_vs_xla)
    pytest.param("pallas", "token", marks=pytest.mark.slow)])
def test_top_k_all_blocks_is_causal_attention_on_tiles(impl, routing):
  q, k, v = qkv(80, t=48, d=8)
  got = fast_jit(lambda q, k, v: run(impl, q, k, v, is_causal=True, block_size=16, top_k=3,
                                     routing=routing), q, k, v)(q, k, v)
  want = jax.nn.dot_product_attention(q, *(jnp.repeat(x, 2, axis=2) for x in (k, v)),
                                      is_causal=True)
  assert_close(got, want)


def test_pallas_tile_visits_equal_selected_blocks():
  """The forward kernel's per-(batch, head, q tile) tile counter (interpret mode, tile = MoBA
  block) equals the (query block, key block) pairs the naive router selects, and is below
  the causal triangle's tile count."""
  q, k, v = qkv(90, t=64, d=8)
  sel = naive_block_select(q, k, 16, 2, causal=True)  # [B, H, 4, 4]
  _, visited = fast_jit(lambda q, k, v: moba.moba_pallas(
      q, k, v, mask=masks.CausalMask(), block_size=16, top_k=2, routing="block",
      debug_counts=True), q, k, v)(q, k, v)
  chex.assert_trees_all_equal(np.asarray(visited), sel.sum(-1))
  assert int(np.asarray(visited).sum()) == int(sel.sum()) < sel.shape[0] * sel.shape[1] * 10


@pytest.mark.parametrize("impl", ("chunked", "pallas"))
def test_unselected_tiles_are_not_visited(impl):
  """NaN values in key block 1: exactly the (batch, head, query block)s that selected it get
  NaN outputs; the others never touch its tiles."""
  q, k, v = qkv(100, t=64, d=8)
  sel = naive_block_select(q, k, 16, 2, causal=True)  # [B, H, 4, 4]
  v = v.at[:, 16:32].set(jnp.nan)
  out = fast_jit(lambda q, k, v: run(impl, q, k, v, is_causal=True, block_size=16, top_k=2,
                                     routing="block"), q, k, v)(q, k, v)
  nan = np.isnan(np.asarray(out)).any(-1)  # [B, T, H]
  want = np.repeat(sel[..., 1], 16, axis=2).transpose(0, 2, 1)  # [B, T, H]
  assert want.any() and not want.all()
  chex.assert_trees_all_equal(nan, want)


def test_block_routing_is_causal():
  """Changing token p (its q, k and v) leaves every output before p unchanged, exactly (p in
  the middle of a block: the block's routing is made by its first query)."""
  q, k, v = qkv(110, t=64, d=8)
  p = 41
  q2, k2, v2 = (x.at[:, p:].add(5.0) for x in (q, k, v))
  fn = fast_jit(lambda q, k, v: run("chunked", q, k, v, is_causal=True, block_size=16,
                                    top_k=2, routing="block"), q, k, v)
  a, b = fn(q, k, v), fn(q2, k2, v2)
  chex.assert_trees_all_equal(a[:, :p], b[:, :p])
  assert float(jnp.abs(a[:, p:] - b[:, p:]).max()) > 1e-3


def test_block_routing_refusals():
  q, k, v = qkv(0, t=48, d=8)
  with pytest.raises(ValueError, match="routing must be one of"):
    run("xla", q, k, v, routing="rows")
  with pytest.raises(ValueError, match="q_offset that is a multiple of block_size"):
    moba.moba_reference(q, k, v, block_size=16, routing="block", q_offset=3)
  with pytest.raises(ValueError, match="'pallas'.*routing='token'.*per-row selection"):
    run("pallas", q, k, v, is_causal=True, block_size=16, top_k=2)
  with pytest.raises(ValueError, match="'pallas'.*multiple of 16"):
    run("pallas", q, k, v, is_causal=True, block_size=24, top_k=2, routing="block")
  with pytest.raises(ValueError, match="tile .* must lie inside one MoBA block"):
    moba.block_tile_states(jnp.ones((1, 1, 3, 3), bool), 48, 48, 16)(32, 32, 2, 2)
  with pytest.raises(ValueError, match=r"tile_states must give .*\[2\|1, 3, 3\], got shape"):
    chunked.chunked_attention(q, k, v, block_q=16, block_k=16, tile_states=lambda bq, bk, nq,
                              nk: np.ones((1, nq + 1, nk), np.int32))
