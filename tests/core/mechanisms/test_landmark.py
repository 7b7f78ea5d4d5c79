"""Landmark attention ("landmark"): against a naive numpy loop written here (per query: outer
softmax over own-block keys and other blocks' landmark keys, inner softmax per block), values
and gradients (central differences), causal and bidirectional, with retrieval top-k; one block
is causal softmax; retrieval keeping every block is the training mode; causality; KV-cache
decoding through MultiHeadAttention."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.nn import attention as A

from numeric_checks import assert_close, check, rand


def naive_landmark(q, k, v, bsz, causal, top_k=None):
  b, t, h, d = q.shape
  kh = k.shape[2]
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  nb = -(-t // bsz)
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // kh)
      s = k[bi, :, kv] @ q[bi, :, hi].T / np.sqrt(d)  # [Tk, Tq]
      for i in range(t):
        vis = [j for j in range(t) if not causal or j <= i]
        own = [j for j in vis if j // bsz == i // bsz]
        gates = [c for c in range(nb) if c != i // bsz and (c + 1) * bsz - 1 in vis]
        if top_k is not None:
          gates = sorted(gates, key=lambda c: -s[(c + 1) * bsz - 1, i])[:top_k]
        outer = np.array([s[j, i] for j in own] + [s[(c + 1) * bsz - 1, i] for c in gates])
        w = np.exp(outer - outer.max())
        w /= w.sum()
        acc = sum(w[n] * v[bi, j, kv] for n, j in enumerate(own))
        for n, c in enumerate(gates):
          members = [j for j in vis if j // bsz == c]
          e = np.exp(np.array([s[j, i] for j in members]) - max(s[j, i] for j in members))
          acc = acc + w[len(own) + n] * (e / e.sum()) @ v[bi, members, kv]
        out[bi, i, hi] = acc
  return out


def inputs(seed, t=20, h=2, kh=1, d=4):
  return [rand(2, t, h, d, seed=seed), rand(2, t, kh, d, seed=seed + 1),
          rand(2, t, kh, d, seed=seed + 2)]


@pytest.mark.parametrize("causal,top_k", [(True, None), (False, None), (True, 1)])
def test_landmark_vs_naive(causal, top_k):
  def core(q, k, v):
    return attnlab.attention(q, k, v, mechanism="landmark", is_causal=causal, block_size=4,
                             retrieval_top_k=top_k)

  check(core, lambda q, k, v: naive_landmark(q, k, v, 4, causal, top_k), inputs(0),
        seeds=(11,))


def test_special_cases():
  q, k, v = inputs(1)
  fn = lambda **kw: jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, mechanism="landmark", is_causal=True, **kw))(q, k, v)
  assert_close(fn(block_size=32), attnlab.attention(q, k, v, is_causal=True))
  assert_close(fn(block_size=4, retrieval_top_k=5), fn(block_size=4))
  out, w = jax.jit(lambda q, k, v: attnlab.attention(
      q, k, v, mechanism="landmark", is_causal=True, block_size=4, return_weights=True))(q, k, v)
  assert_close(w.sum(-1), np.ones(w.shape[:-1]))
  assert_close(np.triu(np.asarray(w[0, 0]), 1), 0.0)


def test_causal():
  q, k, v = inputs(2)
  p = 9
  q2, k2, v2 = (np.concatenate([x[:, :p], x[:, p:] + 4.0], axis=1) for x in (q, k, v))
  fn = jax.jit(lambda q, k, v: attnlab.attention(q, k, v, mechanism="landmark", is_causal=True,
                                                 block_size=4, retrieval_top_k=2))
  chex.assert_trees_all_equal(fn(q, k, v)[:, :p], fn(q2, k2, v2)[:, :p])


@pytest.mark.slow
def test_kv_cache_retrieval_decoding_matches_full_forward():
  mod = A.MultiHeadAttention(16, 2, mechanism="landmark", causal=True, rngs=nnx.Rngs(0),
                             mechanism_kwargs={"block_size": 4, "retrieval_top_k": 2})
  x = jnp.asarray(rand(1, 16, 16, seed=3))
  full = nnx.jit(lambda m, x: m(x))(mod, x)
  mod.init_cache(1, 16)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = jnp.concatenate([step(mod, x[:, i:i + 1]) for i in range(16)], axis=1)
  assert_close(got, full)


def test_bad_arguments():
  q, k, v = inputs(0)
  with pytest.raises(ValueError, match="retrieval_top_k must be a positive int"):
    attnlab.attention(q, k, v, mechanism="landmark", retrieval_top_k=0)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    attnlab.attention(q, k, v, mechanism="landmark", block_size=2.0)
