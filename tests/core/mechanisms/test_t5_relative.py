"""T5 relative buckets: the bucket function vs a naive per-integer loop of T5's
``_relative_position_bucket`` written here (float32 arithmetic as T5's implementations); the
pure function ("xla" and "chunked") vs a naive formula (numpy float64 values, the same formula
in jnp for gradients, the table included); ``T5RelativeAttention`` vs a naive recomputation
from its own parameters, KV-cache decoding, and a tiny DecoderLM from the catalogue
overrides."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import masks
from attnlab.core.mechanisms.t5_relative import relative_bucket, t5_relative_attention
from attnlab.nn.mechanisms.t5_relative import T5RelativeAttention

from _helpers import (ATOL, CAUSAL_T, D, H, OFF, RTOL, TK, TQ, call,  # noqa: I100
                      causal_allowed, check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, f64, jit_call, make, naive_out, naive_softmax, output,
                      project, qkv, rand, rep, randomize, x_input)


def naive_bucket(rel, bidirectional, num_buckets, max_distance):
  """T5's _relative_position_bucket for one integer ``rel = key - query``."""
  ret = 0
  n = -rel
  if bidirectional:
    num_buckets //= 2
    ret += num_buckets if n < 0 else 0
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  f32 = np.float32
  large = max_exact + int(f32(np.log(f32(n) / f32(max_exact))) / f32(
      math.log(max_distance / max_exact)) * f32(num_buckets - max_exact))
  return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("nb,md", [(32, 128), (8, 20)])
def test_bucket_vs_naive(bidirectional, nb, md):
  rel = np.arange(-300, 301)
  got = np.asarray(relative_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                   num_buckets=nb, max_distance=md))
  want = np.array([naive_bucket(int(r), bidirectional, nb, md) for r in rel])
  np.testing.assert_array_equal(got, want)
  assert got.min() == 0 and got.max() == nb - 1


def naive_t5(xp, q, k, v, table, nb, md, bidi, allowed, off, scale):
  i = np.arange(q.shape[1])[:, None] + off
  j = np.arange(k.shape[1])[None, :]
  idx = np.vectorize(lambda r: naive_bucket(int(r), bidi, nb, md))(j - i)
  s = xp.einsum("bihd,bjhd->bhij", q, rep(xp, k, H)) * scale
  s = s + xp.transpose(table[idx], (2, 0, 1))[None]
  return naive_out(xp, naive_softmax(xp, s, allowed), v, H)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize("bidi", [True, False])
def test_t5_vs_naive_and_grads(impl, bidi):
  nb, md = 8, 6
  q, k, v = qkv(20)
  table = rand(nb, H, seed=21)
  allowed = causal_allowed()
  opts = dict(block_q=2, block_k=4) if impl == "chunked" else {}

  def fn(q, k, v, table):
    return attnlab.attention(q, k, v, mechanism="t5_relative", implementation=impl,
                             mask=masks.CausalMask(OFF), q_offset=OFF, rel_bias=table,
                             num_buckets=nb, max_distance=md, bidirectional=bidi, **opts)

  scale = 1 / math.sqrt(D)
  got = check_grads(fn, lambda *a: naive_t5(jnp, *a, nb, md, bidi, allowed, OFF, scale),
                    [q, k, v, table])
  want = naive_t5(np, *f64(q, k, v, table), nb, md, bidi, allowed, OFF, scale)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_t5_without_table_is_softmax_and_bad_input():
  q, k, v = qkv(22)
  got = jit_call(t5_relative_attention, q, k, v)
  want = jit_call(attnlab.attention, q, k, v, implementation="xla")
  chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match="rel_bias must have shape"):
    t5_relative_attention(q, k, v, rel_bias=np.zeros((3, H)), num_buckets=8, max_distance=6)
  with pytest.raises(ValueError, match="max_distance"):
    t5_relative_attention(q, k, v, num_buckets=8, max_distance=2)
  assert TQ <= TK


def test_t5_module_vs_naive_and_decode():
  mod = make(T5RelativeAttention, num_buckets=8, max_distance=6)
  randomize(mod, ["rel_bias"])
  assert not mod.bidirectional  # causal -> unidirectional buckets
  x = x_input(2)
  q, k, v = project(x, mod)
  table = np.asarray(mod.rel_bias[...], np.float64)
  want = output(naive_t5(np, q, k, v, table, 8, 6, False, CAUSAL_T, 0,
                         1 / math.sqrt(q.shape[-1])), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  with pytest.raises(ValueError, match="num_buckets"):
    T5RelativeAttention(16, 4, num_buckets=0, rngs=nnx.Rngs(0))
  assert T5RelativeAttention(16, 4, rngs=nnx.Rngs(0)).bidirectional  # not causal


def test_t5_registered():
  check_registered("t5_relative", "module", fn=t5_relative_attention,
                   module=T5RelativeAttention)


@pytest.mark.slow  # the catalogue test also trains t5_relative (configs/mechanisms.py)
def test_t5_decoder_lm():
  check_decoder_lm_forward_grad("t5_relative", T5RelativeAttention)
