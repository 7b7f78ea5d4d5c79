"""ConViT gated positional self-attention (GPSA, 1-D): the pure function vs a naive formula
written here (numpy float64 values, the same formula in jnp for gradients), its gate limits and
locality; ``GPSAttention`` locality init and naive recomputation, KV-cache decoding, and a tiny
DecoderLM from the catalogue overrides."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.core.mechanisms.gpsa import gpsa_attention, locality_pos_weights
from attnlab.nn.mechanisms.gpsa import GPSAttention

from _helpers import (ATOL, IMPLS, CAUSAL_T, H, OFF, RTOL, TQ, call, causal_allowed,  # noqa: I100
                      check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, f64, jit_call, make, naive_out, naive_softmax, output,
                      project, qkv, rand, rep, softmax_ref, x_input)


def naive_gpsa(xp, q, k, v, pos_w, gate, allowed, off):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  content = naive_softmax(xp, xp.einsum("bihd,bjhd->bhij", q, rep(xp, k, h)) / math.sqrt(d),
                          allowed)
  delta = (np.arange(tk)[None, :] - np.arange(tq)[:, None] - off).astype(np.float64)
  pl = pos_w[:, 0, None, None] * delta ** 2 + pos_w[:, 1, None, None] * delta
  pos = naive_softmax(xp, pl[None], allowed)
  g = 1 / (1 + xp.exp(-gate))[None, :, None, None]
  a = (1 - g) * content + g * pos
  return naive_out(xp, a / a.sum(-1, keepdims=True), v, h)


# ---------------------------------------------------------------------------------------------
# Pure function.


@pytest.mark.parametrize("impl_name", ["xla", "chunked"])
def test_gpsa_vs_naive_and_grads(impl_name):
  q, k, v = qkv(40)
  pos_w = rand(H, 2, seed=41) * 0.3
  gate = rand(H, seed=42)
  allowed = causal_allowed()

  def impl(q, k, v, pos_w, gate):
    return attnlab.attention(q, k, v, mechanism="gpsa", mask=masks.CausalMask(OFF),
                             q_offset=OFF, pos_weights=pos_w, gate=gate,
                             **IMPLS[impl_name])

  got = check_grads(impl, lambda *a: naive_gpsa(jnp, *a, allowed, OFF),
                    [q, k, v, pos_w, gate])
  want = naive_gpsa(np, *f64(q, k, v, pos_w, gate), allowed, OFF)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_gpsa_gate_limits_and_locality():
  """sigmoid(lambda) -> 0: content (softmax) attention; -> 1: positional attention, which with
  the locality init peaks at offset Delta_h (causal: h tokens back)."""
  q, k, v = qkv(43)
  pos_w = jit_call(locality_pos_weights, -jnp.arange(H), 5.0)
  got = jit_call(gpsa_attention, q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF,
                 pos_weights=pos_w, gate=jnp.full((H,), -40.0))
  chex.assert_trees_all_close(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)
  _, w = jit_call(gpsa_attention, q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF,
                  pos_weights=pos_w, gate=jnp.full((H,), 40.0), return_weights=True)
  w = np.asarray(w)
  for h in range(H):
    for i in range(TQ):
      assert w[0, h, i].argmax() == max(i + OFF - h, 0)
      assert w[0, h, i].max() > 0.9
      assert np.all(w[0, h, i, i + OFF + 1:] == 0)  # causal positional attention


def test_gpsa_bad_shapes_raise():
  q, k, v = qkv(90)
  with pytest.raises(ValueError, match="pos_weights"):
    jit_call(gpsa_attention, q, k, v, pos_weights=np.zeros((H, 3)), gate=np.zeros(H))


# ---------------------------------------------------------------------------------------------
# Module.


def test_gpsa_module_vs_naive_and_locality_init():
  mod = make(GPSAttention, locality_strength=2.0)
  chex.assert_trees_all_close(
      np.asarray(mod.pos_weights[...]),
      np.asarray([[-2.0, -0.0], [-2.0, -4.0], [-2.0, -8.0], [-2.0, -12.0]]), rtol=1e-7)
  chex.assert_trees_all_close(np.asarray(mod.gate[...]), 1.0, rtol=1e-7)
  x = x_input(4)
  q, k, v = project(x, mod)
  want = output(naive_gpsa(np, q, k, v, np.asarray(mod.pos_weights[...], np.float64),
                           np.asarray(mod.gate[...], np.float64), CAUSAL_T, 0), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)


def test_gpsa_registered():
  check_registered("gpsa", "module", fn=gpsa_attention, module=GPSAttention)


def test_gpsa_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("gpsa", GPSAttention)
