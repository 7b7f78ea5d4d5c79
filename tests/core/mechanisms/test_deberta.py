"""DeBERTa disentangled attention: the pure function vs a naive formula written here (numpy
float64 values, the same formula in jnp for gradients), translation invariance and log buckets;
``DebertaAttention`` vs a naive recomputation from its own parameters, its typed constructor,
KV-cache decoding, and a tiny DecoderLM from the catalogue overrides."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import masks, models
from attnlab.core.mechanisms.deberta import deberta_attention, log_bucket, relative_index
from attnlab.nn.mechanisms.deberta import DebertaAttention

from _helpers import (ATOL, IMPLS, CAUSAL_T, D, H, K, OFF, RTOL, TK, VOCAB, E, call,  # noqa: I100
                      causal_allowed, check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, f64, jit_call, make, model_config, naive_out,
                      naive_softmax, output, project, qkv, rand, rep, softmax_ref, x_input, B)


def naive_deberta(xp, q, k, v, q_r, k_r, m, allowed, off):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  i = np.arange(tq)[:, None] + off
  j = np.arange(tk)[None, :]
  dij = np.clip(i - j + m, 0, 2 * m - 1)  # d(i, j)
  dji = np.clip(j - i + m, 0, 2 * m - 1)  # d(j, i)
  kk = rep(xp, k, h)
  c2c = xp.einsum("bihd,bjhd->bhij", q, kk)
  c2p = xp.einsum("bihd,ijhd->bhij", q, k_r[dij])
  p2c = xp.einsum("bjhd,ijhd->bhij", kk, q_r[dji])
  p = naive_softmax(xp, (c2c + c2p + p2c) / math.sqrt(3 * d), allowed)
  return naive_out(xp, p, v, h)


# ---------------------------------------------------------------------------------------------
# Pure function.


@pytest.mark.parametrize("impl_name", ["xla", "chunked"])
def test_deberta_vs_naive_and_grads(impl_name):
  m = 3
  q, k, v = qkv(10)
  q_r, k_r = rand(2 * m, H, D, seed=11), rand(2 * m, H, D, seed=12)
  allowed = causal_allowed()

  def impl(q, k, v, q_r, k_r):
    return attnlab.attention(q, k, v, mechanism="deberta", mask=masks.CausalMask(OFF),
                             q_offset=OFF, q_r=q_r, k_r=k_r, max_distance=m,
                             **IMPLS[impl_name])

  got = check_grads(impl, lambda *a: naive_deberta(jnp, *a, m, allowed, OFF),
                    [q, k, v, q_r, k_r])
  want = naive_deberta(np, *f64(q, k, v, q_r, k_r), m, allowed, OFF)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_deberta_without_relative_terms_is_softmax():
  q, k, v = qkv(13)
  got = jit_call(deberta_attention, q, k, v, mask=masks.CausalMask(OFF))
  chex.assert_trees_all_close(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)


def test_deberta_relative_terms_are_translation_invariant():
  """Only i - j enters the position terms: shifting every position by the same amount (q_offset
  with keys shifted alike) leaves the scores unchanged; distances beyond m are clipped."""
  m = 2
  q, k, v = qkv(14, tq=TK, tk=TK)
  q_r, k_r = rand(2 * m, H, D, seed=15), rand(2 * m, H, D, seed=16)
  a = jit_call(deberta_attention, q, k, v, q_r=q_r, k_r=k_r, max_distance=m)
  # Same tokens, but queries numbered from q_offset = 3 and keys padded by 3 masked slots.
  pad = np.zeros((B, 3, K, D), np.float32)
  kp, vp = np.concatenate([pad, k], 1), np.concatenate([pad, v], 1)
  allow = masks.ArrayMask(jnp.asarray(np.arange(TK + 3)[None, None, :] >= 3)
                          .repeat(TK, axis=1))
  b = jit_call(deberta_attention, q, kp, vp, q_r=q_r, k_r=k_r, max_distance=m, q_offset=3,
               mask=allow)
  chex.assert_trees_all_close(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  idx = np.asarray(jit_call(relative_index, jnp.arange(6), jnp.arange(6), max_distance=m))
  assert idx.min() == 0 and idx.max() == 2 * m - 1 and idx[5, 0] == 2 * m - 1 and idx[0, 5] == 0


def test_deberta_log_buckets():
  rel = jnp.arange(-300, 301)
  bk = np.asarray(jit_call(log_bucket, rel, bucket_size=16, max_position=512))
  small = np.abs(np.arange(-300, 301)) <= 8
  chex.assert_trees_all_equal(bk[small], np.arange(-300, 301)[small])
  assert np.all(np.diff(bk) >= 0) and bk.max() <= 15 and bk.min() >= -15
  idx = np.asarray(jit_call(relative_index, jnp.arange(300), jnp.arange(300), max_distance=16,
                            log_buckets=True))
  assert idx.min() >= 0 and idx.max() <= 31


def test_deberta_bad_shapes_raise():
  q, k, v = qkv(90)
  with pytest.raises(ValueError, match="q_r"):
    jit_call(deberta_attention, q, k, v, q_r=np.zeros((3, H, D)), max_distance=2)


# ---------------------------------------------------------------------------------------------
# Module.


def test_deberta_module_vs_naive():
  mod = make(DebertaAttention, max_distance=3)
  x = x_input(1)
  q, k, v = project(x, mod)
  p = np.asarray(mod.rel_table[...], np.float64)
  q_r = np.einsum("re,ehd->rhd", p, np.asarray(mod.q_rel[...], np.float64))
  k_r = np.einsum("re,ehd->rhd", p, np.asarray(mod.k_rel[...], np.float64))
  want = output(naive_deberta(np, q, k, v, q_r, k_r, 3, CAUSAL_T, 0), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  assert mod.rel_table[...].shape == (6, E)


def test_deberta_module_typed_constructor():
  """Hyperparameters are typed keyword arguments (MultiHeadAttention's pass through); the
  class fixes its mechanism."""
  mod = DebertaAttention(d_model=32, num_heads=4, max_distance=8, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.RandomState(0).standard_normal((2, 8, 32)), jnp.float32)
  y = call(mod, x)
  chex.assert_shape(y, (2, 8, 32))
  chex.assert_tree_all_finite(y)
  assert mod.mechanism == "deberta" and mod.rel_table[...].shape == (16, 32)
  causal = DebertaAttention(d_model=32, num_heads=4, max_distance=8, log_buckets=False,
                            rngs=nnx.Rngs(0), causal=True, position="none")
  assert causal.causal and causal.position == "none"
  with pytest.raises(TypeError):
    DebertaAttention(16, 4, mechanism="softmax", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError):
    DebertaAttention(16, 4, max_distanse=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_distance"):
    DebertaAttention(16, 4, max_distance=0, rngs=nnx.Rngs(0))


def test_deberta_registered_and_config_validated():
  check_registered("deberta", "module", fn=deberta_attention, module=DebertaAttention)
  cfg = model_config("deberta")
  cfg.attention.kwargs.max_distance = 0
  with pytest.raises(ValueError, match="max_distance"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))


def test_deberta_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("deberta", DebertaAttention)
