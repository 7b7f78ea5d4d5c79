"""RCMHA (Transformer-XL relative terms on convolved q/k/v): the pure function vs a naive
formula written here (numpy float64 values, the same formula in jnp for gradients);
``RCMHAttention`` and its causal depth-wise convolution vs naive recomputations, KV-cache
decoding (with the convolution state), and a tiny DecoderLM from the catalogue overrides."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.core.mechanisms.rcmha import rcmha_attention
from attnlab.nn.mechanisms.rcmha import RCMHAttention, causal_depthwise_conv

from _helpers import (ATOL, IMPLS, BATCH, CAUSAL_T, D, D_MOD, H, OFF, RTOL, T, call,  # noqa: I100
                      causal_allowed, check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, f64, jit_call, make, naive_out, naive_softmax, output,
                      project, qkv, rand, randomize, rep, softmax_ref, x_input)


def naive_rcmha(xp, q, k, v, r, u, w, m, allowed, off):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  rel = np.clip(np.arange(tq)[:, None] + off - np.arange(tk)[None, :], -m, m) + m
  s = (xp.einsum("bihd,bjhd->bhij", q + u, rep(xp, k, h))
       + xp.einsum("bihd,ijhd->bhij", q + w, r[rel]))
  return naive_out(xp, naive_softmax(xp, s / math.sqrt(d), allowed), v, h)


# ---------------------------------------------------------------------------------------------
# Pure function.


@pytest.mark.parametrize("impl_name", ["xla", "chunked"])
def test_rcmha_vs_naive_and_grads(impl_name):
  m = 3
  q, k, v = qkv(20)
  r = rand(2 * m + 1, H, D, seed=21)
  u, w = rand(H, D, seed=22), rand(H, D, seed=23)
  allowed = causal_allowed()

  def impl(q, k, v, r, u, w):
    return attnlab.attention(q, k, v, mechanism="rcmha", mask=masks.CausalMask(OFF),
                             q_offset=OFF, r=r, u=u, w=w, max_distance=m,
                             **IMPLS[impl_name])

  got = check_grads(impl, lambda *a: naive_rcmha(jnp, *a, m, allowed, OFF),
                    [q, k, v, r, u, w])
  want = naive_rcmha(np, *f64(q, k, v, r, u, w), m, allowed, OFF)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_rcmha_constant_relative_table_is_softmax():
  """A relative table that is the same for every distance adds a per-row constant, which the
  softmax ignores: the result is softmax attention of (q + u)."""
  m = 2
  q, k, v = qkv(24)
  r = np.broadcast_to(rand(1, H, D, seed=25), (2 * m + 1, H, D))
  u = rand(H, D, seed=26)
  got = jit_call(rcmha_attention, q, k, v, r=r, u=u, w=u, max_distance=m,
                 mask=masks.CausalMask(OFF), q_offset=OFF)
  chex.assert_trees_all_close(np.asarray(got), softmax_ref(q + u[None, None], k, v, OFF),
                              rtol=RTOL, atol=ATOL)
  plain = jit_call(rcmha_attention, q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF)
  chex.assert_trees_all_close(np.asarray(plain), softmax_ref(q, k, v, OFF), rtol=RTOL,
                              atol=ATOL)


def test_rcmha_bad_shapes_raise():
  q, k, v = qkv(90)
  with pytest.raises(ValueError, match="max_distance"):
    jit_call(rcmha_attention, q, k, v, max_distance=0)


# ---------------------------------------------------------------------------------------------
# Module.


def test_rcmha_conv_is_causal_and_module_vs_naive():
  rng = np.random.RandomState(2)
  xs = rng.standard_normal((BATCH, T, H, D_MOD)).astype(np.float32)
  ker = rng.standard_normal((3, H, D_MOD)).astype(np.float32)
  got = np.asarray(jax.jit(causal_depthwise_conv)(xs, ker))
  want = np.zeros_like(got)
  for t in range(T):
    for s in range(3):
      src = t - 2 + s
      if src >= 0:
        want[:, t] += ker[s] * xs[:, src]
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

  mod = make(RCMHAttention, max_distance=3)
  randomize(mod, ["conv_q", "conv_k", "conv_v", "u", "w"], seed=3)
  x = x_input(2)
  raw = project(x, mod)
  conv = [np.asarray(causal_depthwise_conv(jnp.asarray(r, jnp.float32), c[...]), np.float64)
          for r, c in zip(raw, (mod.conv_q, mod.conv_k, mod.conv_v))]
  r = np.asarray(mod.relative_table(), np.float64)
  want = output(naive_rcmha(np, *conv, r, np.asarray(mod.u[...], np.float64),
                            np.asarray(mod.w[...], np.float64), 3, CAUSAL_T, 0), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)  # the convolution state carries across chunks
  # Causal: changing the last token changes no earlier output.
  x2 = x.at[:, -1].add(1.0)
  chex.assert_trees_all_close(np.asarray(call(mod, x2))[:, :-1],
                              np.asarray(call(mod, x))[:, :-1], rtol=1e-5, atol=1e-6)


def test_rcmha_registered():
  check_registered("rcmha", "module", fn=rcmha_attention, module=RCMHAttention)


def test_rcmha_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("rcmha", RCMHAttention)
