"""Selective attention (SSA, "selective_ssa"): the pure function vs a naive formula written
here (numpy float64 values, the same formula in jnp for gradients) and the paper's properties;
``SelectiveAttention`` vs a naive recomputation from its own parameters, KV-cache decoding, and
a tiny DecoderLM from the catalogue overrides."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import models
from attnlab.core.mechanisms.selective import selective_attention
from attnlab.nn import attention as A
from attnlab.nn.mechanisms.selective import SelectiveAttention

from _helpers import (ATOL, IMPLS, B, CAUSAL, CAUSAL_T, D_MOD, H, K, OFF, RTOL, TK,  # noqa: I100
                      TQ, VOCAB, call, causal_allowed, check_decode, check_decoder_lm_forward_grad,
                      check_grads, check_registered, f64, jit_call, make, model_config,
                      naive_out, naive_softmax, output, project, qkv, rand, randomize, rep,
                      softmax_ref, x_input)


def naive_selective(xp, q, k, v, qt, vt, s, allowed):
  h, d = q.shape[2], q.shape[3]
  n = np.maximum(np.asarray(allowed).sum(-1), 1).astype(np.float64)  # [Tq]
  tau = qt + s[None, None, :] * xp.log(xp.asarray(n))[None, :, None]
  logits = xp.einsum("bihd,bjhd->bhij", q * tau[..., None], rep(xp, k, h)) / math.sqrt(d)
  p = naive_softmax(xp, logits, allowed)
  return naive_out(xp, p, v * vt[..., None], h)


# ---------------------------------------------------------------------------------------------
# Pure function.


@pytest.mark.parametrize("impl_name", ["xla", "chunked"])
def test_selective_vs_naive_and_grads(impl_name):
  q, k, v = qkv(0)
  qt = 1 + 0.5 * np.tanh(rand(B, TQ, H, seed=5))
  vt = 1 + 0.5 * np.tanh(rand(B, TK, K, seed=6))
  s = np.abs(rand(H, seed=7)) * 0.3
  allowed = causal_allowed()

  def impl(q, k, v, qt, vt, s):
    return attnlab.attention(q, k, v, mechanism="selective_ssa", mask=CAUSAL, q_temperature=qt,
                             v_temperature=vt, position_strength=s, **IMPLS[impl_name])

  got = check_grads(impl, lambda *a: naive_selective(jnp, *a, allowed), [q, k, v, qt, vt, s])
  want = naive_selective(np, *f64(q, k, v, qt, vt, s), allowed)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_selective_unit_temperatures_is_softmax():
  q, k, v = qkv(1)
  got = jit_call(selective_attention, jnp.asarray(q), k, v, mask=CAUSAL,
                 q_temperature=jnp.ones((B, TQ, H)), v_temperature=jnp.ones((B, TK, K)),
                 position_strength=0.0)
  chex.assert_trees_all_close(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)


def test_selective_temperature_controls_sparsity():
  """The paper's point: a larger query temperature gives a spikier (lower entropy) row; a zero
  value temperature removes that token's value."""
  q, k, v = qkv(2)
  ent = []
  for t in (0.5, 1.0, 2.0, 4.0):
    _, w = jit_call(selective_attention, q, k, v, q_temperature=jnp.full((B, TQ, H), t),
                    return_weights=True)
    w = np.asarray(w)
    ent.append(-(w * np.log(w)).sum(-1).mean())
  assert all(a > b for a, b in zip(ent, ent[1:]))
  vt = np.ones((B, TK, K), np.float32)
  vt[:, 3] = 0.0
  v2 = v.copy()
  v2[:, 3] = 123.0  # any value: it is multiplied by 0
  a = jit_call(selective_attention, q, k, v, v_temperature=vt)
  b = jit_call(selective_attention, q, k, v2, v_temperature=vt)
  chex.assert_trees_all_close(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_selective_position_term_counts_visible_keys():
  """tau_i = 1 + s log(n_i): with q_temperature 1 and strength s it equals the explicit
  per-row temperature 1 + s log(i + 1 + offset)."""
  q, k, v = qkv(3)
  s = 0.7
  n = np.arange(TQ) + OFF + 1
  explicit = np.broadcast_to((1 + s * np.log(n))[None, :, None], (B, TQ, H)).astype(np.float32)
  a = jit_call(selective_attention, q, k, v, mask=CAUSAL, position_strength=s)
  b = jit_call(selective_attention, q, k, v, mask=CAUSAL, q_temperature=explicit)
  chex.assert_trees_all_close(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_selective_bad_shapes_raise():
  q, k, v = qkv(90)
  with pytest.raises(ValueError, match="q_temperature"):
    jit_call(selective_attention, q, k, v, q_temperature=np.ones((B, TQ, H + 1)))


# ---------------------------------------------------------------------------------------------
# Module.


def test_selective_module_vs_naive():
  mod = make(SelectiveAttention)
  randomize(mod, ["q_temp", "v_temp", "pos_temp"])
  x = x_input()
  q, k, v = project(x, mod)
  qt = 1 + np.tanh(np.einsum("bthd,hd->bth", q, np.asarray(mod.q_temp[...], np.float64)))
  vt = 1 + np.tanh(np.einsum("bthd,hd->bth", v, np.asarray(mod.v_temp[...], np.float64)))
  s = np.exp(-np.exp(np.asarray(mod.pos_temp[...], np.float64)))
  want = output(naive_selective(np, q, k, v, qt, vt, s, CAUSAL_T), mod)
  full = call(mod, x)
  chex.assert_shape(full, x.shape)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  # All temperatures off: exactly MultiHeadAttention with the same kernels.
  off = make(SelectiveAttention, query_temperature=False, value_temperature=False,
             position_temperature=False)
  base = make(A.MultiHeadAttention)
  chex.assert_trees_all_close(np.asarray(call(off, x)), np.asarray(call(base, x)), rtol=1e-5,
                              atol=1e-6)
  assert off.q_temp is None and mod.q_temp[...].shape == (H, D_MOD)


def test_selective_registered_and_config_validated():
  check_registered("selective_ssa", "module", fn=selective_attention, module=SelectiveAttention)
  cfg = model_config("selective_ssa")
  cfg.attention.kwargs.bogus = 1
  with pytest.raises(ValueError, match="bogus"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError):  # the class fixes its mechanism
    make(SelectiveAttention, mechanism="softmax")
  with pytest.raises(ValueError, match="query_temperature"):
    make(SelectiveAttention, query_temperature=1)


def test_selective_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("selective_ssa", SelectiveAttention)
