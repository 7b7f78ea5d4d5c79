"""ComplexFormer (CMHA): the pure function vs a naive polar-form formula written here (numpy
float64 values, the same formula in jnp for gradients), its RoPE and softmax special cases;
``ComplexFormerAttention`` at init equals RoPE attention, KV-cache decoding, and a tiny
DecoderLM from the catalogue overrides."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab import masks, models
from attnlab.core.mechanisms.complexformer import complex_attention
from attnlab.nn import attention as A
from attnlab.nn.mechanisms.complexformer import ComplexFormerAttention
from attnlab.nn.positions import apply_rope

from _helpers import (VOCAB, H, OFF, TK, TQ, call, causal_allowed, check_decode,  # noqa: I100
                      check_decoder_lm_forward_grad, check_grads, check_registered, f64,
                      jit_call, make, model_config, naive_out, naive_softmax, qkv, rand,
                      randomize, rep, softmax_ref, x_input)


def naive_complex(xp, q, k, v, a, b_, s, base, allowed, off):
  """Polar form, explicit angle differences per (i, j, c)."""
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  c = d // 2
  kk = rep(xp, k, h)
  rq = xp.sqrt(q[..., :c] ** 2 + q[..., c:] ** 2)
  tq_ = xp.arctan2(q[..., c:], q[..., :c])
  rk = xp.sqrt(kk[..., :c] ** 2 + kk[..., c:] ** 2)
  tk_ = xp.arctan2(kk[..., c:], kk[..., :c])
  omega = base ** (-np.arange(0, d, 2) / d)
  mn = (np.arange(tq)[:, None] + off - np.arange(tk)[None, :]).astype(np.float64)
  phase = (a[None, :, None, None, None] * (tq_.transpose(0, 2, 1, 3)[:, :, :, None, :]
                                            - tk_.transpose(0, 2, 1, 3)[:, :, None, :, :])
           + b_[None, :, None, None, None]
           + s[None, :, None, None, None] * mn[None, None, :, :, None] * omega)
  amp = rq.transpose(0, 2, 1, 3)[:, :, :, None, :] * rk.transpose(0, 2, 1, 3)[:, :, None, :, :]
  logits = (amp * xp.cos(phase)).sum(-1) / math.sqrt(d)
  return naive_out(xp, naive_softmax(xp, logits, allowed), v, h)


# ---------------------------------------------------------------------------------------------
# Pure function.


def test_complexformer_vs_naive_and_grads():
  q, k, v = qkv(30)
  a = 1 + 0.2 * rand(H, seed=31)
  b_ = 0.3 * rand(H, seed=32)
  s = 1 + 0.5 * rand(H, seed=33)
  allowed = causal_allowed()

  def impl(q, k, v, a, b_, s):
    return attnlab.attention(q, k, v, mechanism="complexformer", mask=masks.CausalMask(OFF),
                             q_offset=OFF, phase_scale=a, phase_bias=b_, pos_scale=s,
                             rope_base=100.0)

  # a != 1 has a branch cut at theta = +-pi: the random inputs stay away from it almost surely.
  got = check_grads(impl, lambda *x: naive_complex(jnp, *x, 100.0, allowed, OFF),
                    [q, k, v, a, b_, s], rtol=5e-3, atol=5e-4)
  want = naive_complex(np, *f64(q, k, v, a, b_, s), 100.0, allowed, OFF)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=5e-4, atol=5e-5)


def test_complexformer_rope_setting_equals_rope_softmax():
  """a = 1, b = 0, s = 1 (the module's init) is softmax attention on RoPE-rotated q and k."""
  q, k, v = qkv(34)
  got = jit_call(complex_attention, q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF)
  qr = jit_call(apply_rope, jnp.asarray(q), jnp.arange(TQ) + OFF)
  kr = jit_call(apply_rope, jnp.asarray(k), jnp.arange(TK))
  chex.assert_trees_all_close(np.asarray(got), softmax_ref(qr, kr, v, OFF), rtol=5e-4,
                              atol=5e-5)
  plain = jit_call(complex_attention, q, k, v, pos_scale=0.0)  # no positional phase: softmax
  chex.assert_trees_all_close(np.asarray(plain), softmax_ref(q, k, v), rtol=5e-4, atol=5e-5)


def test_complexformer_zero_vectors_have_finite_grads():
  q, k, v = qkv(35)
  q[:, 0] = 0.0
  k[:, 1] = 0.0
  g = jax.jit(jax.grad(lambda q, k: jnp.sum(complex_attention(q, k, v, phase_scale=1.3)),
                       (0, 1)))(jnp.asarray(q), jnp.asarray(k))
  chex.assert_tree_all_finite(g)


def test_complexformer_bad_shapes_raise():
  q, k, v = qkv(90)
  with pytest.raises(ValueError, match="head_dim must be even"):
    jit_call(complex_attention, q[..., :5], k[..., :5], v)


# ---------------------------------------------------------------------------------------------
# Module.


def test_complexformer_module_at_init_is_rope_attention():
  """The module's phase adaptation starts at its RoPE setting (a=1, b=0, s=1): same output as
  MultiHeadAttention(position="rope") with the same kernels."""
  mod = make(ComplexFormerAttention)
  rope = make(A.MultiHeadAttention, position="rope")
  for name in "qkvo":
    getattr(rope, name).kernel[...] = getattr(mod, name).kernel[...]
  x = x_input(3)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), np.asarray(call(rope, x)), rtol=1e-4,
                              atol=1e-5)
  randomize(mod, ["phase_scale", "phase_bias", "pos_scale"], seed=4, scale=0.2)
  check_decode(mod, x, call(mod, x))
  with pytest.raises(ValueError, match="rope"):
    make(ComplexFormerAttention, position="rope")


def test_complexformer_registered_and_config_validated():
  check_registered("complexformer", "module", fn=complex_attention,
                   module=ComplexFormerAttention)
  cfg = model_config("complexformer")
  cfg.position = "rope"
  # Values are checked by the module's constructor when the model is built
  # (validate_model_config checks names and kwargs, see attnlab/models/config.py).
  with pytest.raises(ValueError, match="rope"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))


def test_complexformer_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("complexformer", ComplexFormerAttention)
