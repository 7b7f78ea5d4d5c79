"""RetrievalAttention-style top-k ("retrieval_topk"): against a naive numpy loop written here
(per query: sort the visible scores, keep the top-k, the window and the sinks, softmax), values
and gradients (central differences); top-k >= Tk is full attention; the recall / attention
mass metrics against numpy; KV-cache decoding through MultiHeadAttention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.core.mechanisms.retrieval_topk import retrieval_metrics
from attnlab.nn import attention as A

from numeric_checks import assert_close, check, rand


def naive_keep(q, k, top_k, window, sink, causal):
  b, t, h, d = q.shape
  kh = k.shape[2]
  keep = np.zeros((b, h, t, t), bool)
  for bi in range(b):
    for hi in range(h):
      for i in range(t):
        vis = [j for j in range(t) if not causal or j <= i]
        raw = {j: q[bi, i, hi] @ k[bi, j, hi // (h // kh)] for j in vis}
        chosen = set(sorted(vis, key=lambda j: -raw[j])[:top_k])
        chosen |= {j for j in vis if 0 <= i - j < window or j < sink}
        keep[bi, hi, i, sorted(chosen)] = True
  return keep


def naive_attend(q, k, v, keep):
  h, kh, d = q.shape[2], k.shape[2], q.shape[3]
  kk, vv = np.repeat(k, h // kh, 2), np.repeat(v, h // kh, 2)
  s = np.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(d)
  s = np.where(keep, s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhij,bjhd->bihd", w, vv), w


def inputs(seed, t=16, h=2, kh=1, d=4):
  return [rand(2, t, h, d, seed=seed), rand(2, t, kh, d, seed=seed + 1),
          rand(2, t, kh, d, seed=seed + 2)]


@pytest.mark.parametrize("causal", [True, False])
def test_retrieval_vs_naive(causal):
  q, k, v = inputs(0)
  keep = naive_keep(np.float64(q), np.float64(k), 3, 2, 1, causal)

  def core(q, k, v):
    return attnlab.attention(q, k, v, mechanism="retrieval_topk", is_causal=causal, top_k=3,
                             window=2, sink=1)

  check(core, lambda q, k, v: naive_attend(q, k, v, keep)[0], [q, k, v], seeds=(11,))


def test_full_top_k_is_attention_and_metrics():
  q, k, v = inputs(1)
  fn = lambda **kw: jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, mechanism="retrieval_topk", is_causal=True, **kw))(q, k, v)
  assert_close(fn(top_k=16, window=0), attnlab.attention(q, k, v, is_causal=True))
  m = jax.jit(lambda q, k, v: retrieval_metrics(q, k, v, mask=attnlab.masks.CausalMask(),
                                                top_k=3, window=1))(q, k, v)
  keep = naive_keep(np.float64(q), np.float64(k), 3, 1, 0, True)
  _, full = naive_attend(np.float64(q), np.float64(k), np.float64(v),
                         np.tril(np.ones((16, 16), bool)))
  assert_close(m["mass_error"], np.where(keep, 0.0, full).sum(-1))
  top = np.argsort(-full, axis=-1, kind="stable")[..., :3]
  want_recall = np.take_along_axis(keep, top, -1).mean(-1)
  # Rows with fewer than 3 visible keys keep them all (recall 1); compare rows with >= 3.
  assert_close(np.asarray(m["recall"])[..., 2:], want_recall[..., 2:])
  assert_close(np.asarray(m["recall"])[..., :2], 1.0)
  assert float(np.max(m["mass_error"])) > 1e-3 and np.all(np.asarray(m["recall"])[..., 3:] > 0)


@pytest.mark.slow
def test_kv_cache_decoding_matches_full_forward():
  mod = A.MultiHeadAttention(16, 2, mechanism="retrieval_topk", causal=True, rngs=nnx.Rngs(0),
                             mechanism_kwargs={"top_k": 3, "window": 2})
  x = jnp.asarray(rand(1, 12, 16, seed=3))
  full = nnx.jit(lambda m, x: m(x))(mod, x)
  mod.init_cache(1, 12)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = jnp.concatenate([step(mod, x[:, i:i + 1]) for i in range(12)], axis=1)
  assert_close(got, full)


def test_bad_arguments():
  q, k, v = inputs(0)
  with pytest.raises(ValueError, match="window must be a non-negative int"):
    attnlab.attention(q, k, v, mechanism="retrieval_topk", window=-1)
  with pytest.raises(ValueError, match="top_k must be a positive int"):
    attnlab.attention(q, k, v, mechanism="retrieval_topk", top_k=0)
