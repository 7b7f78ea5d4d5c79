"""Random-feature attention ("random_qk"): the pure function vs a naive bilinear formula written
here, its frozen matrix (no gradient); ``RandomQKAttention`` vs a naive recomputation, the
frozen matrix outside the optimizer's parameters, KV-cache decoding, and a tiny DecoderLM from
the catalogue overrides."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import attnlab
from attnlab import masks
from attnlab.core.mechanisms.random_qk import random_qk_attention
from attnlab.nn.mechanisms.random_qk import FrozenRandom, RandomQKAttention
from attnlab.train import steps as steps_lib

from _helpers import (ATOL, BATCH, CAUSAL_T, D, E, H, OFF, RTOL, call,  # noqa: I100
                      causal_allowed, check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, f64, jit_call, kernels, make, naive_out, naive_softmax,
                      output, qkv, rand, rep, softmax_ref, x_input)


def naive_random_qk(xp, q, k, v, w, allowed):
  h, d = q.shape[2], q.shape[3]
  logits = xp.einsum("bihd,hde,bjhe->bhij", q, w, rep(xp, k, h)) / math.sqrt(d)
  return naive_out(xp, naive_softmax(xp, logits, allowed), v, h)


# ---------------------------------------------------------------------------------------------
# Pure function.


def test_random_qk_vs_naive_and_frozen_matrix():
  q, k, v = qkv(60, kh=H)
  w = rand(H, D, D, seed=61) / math.sqrt(D) + 0.5 * np.eye(D)[None]
  allowed = causal_allowed()

  def impl(q, k, v):
    return attnlab.attention(q, k, v, mechanism="random_qk", mask=masks.CausalMask(OFF),
                             q_offset=OFF, qk_matrix=jnp.asarray(w, jnp.float32))

  got = check_grads(impl, lambda q, k, v: naive_random_qk(jnp, q, k, v, jnp.asarray(w), allowed),
                    [q, k, v])
  want = naive_random_qk(np, *f64(q, k, v, w), allowed)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)
  gw = jax.jit(jax.grad(lambda w: jnp.sum(random_qk_attention(q, k, v, qk_matrix=w))))(
      jnp.asarray(w, jnp.float32))
  assert np.all(np.asarray(gw) == 0)  # frozen: no gradient into the random matrix
  ident = jit_call(random_qk_attention, q, k, v, qk_matrix=jnp.broadcast_to(jnp.eye(D), (H, D, D)),
                   mask=masks.CausalMask(OFF), q_offset=OFF)
  chex.assert_trees_all_close(np.asarray(ident), softmax_ref(q, k, v, OFF), rtol=RTOL,
                              atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Module.


def test_random_qk_module_vs_naive_and_frozen():
  mod = make(RandomQKAttention, qk_mean=0.5)
  assert mod.q is None and mod.k is None
  assert isinstance(mod.qk_matrix, FrozenRandom)
  assert not isinstance(mod.qk_matrix, nnx.Param)
  x = x_input(6)
  xn = np.asarray(x, np.float64)
  w = np.asarray(mod.qk_matrix[...], np.float64)
  _, _, wv, _ = kernels(mod)
  v = np.einsum("bte,ehd->bthd", xn, wv)
  logits = np.einsum("bie,hef,bjf->bhij", xn, w, xn) / math.sqrt(E)
  want = output(naive_out(np, naive_softmax(np, logits, CAUSAL_T), v, H), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)  # key cache holds the inputs: [B, S, 1, E]
  chex.assert_shape(mod.cached_key[...], (BATCH, 8, 1, E))
  # Mean of W is qk_mean * I (up to sampling noise over E^2 entries).
  assert abs(np.mean(np.diagonal(w, axis1=1, axis2=2)) - 0.5) < 0.2

  # An optimizer over nnx.Param (what attnlab.train builds) never touches W; values move.
  w0, v0 = np.asarray(mod.qk_matrix[...]), np.asarray(mod.v.kernel[...])
  opt = nnx.Optimizer(mod, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(m, o, x):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m)
    o.update(m, grads)

  for _ in range(2):
    step(mod, opt, x)
  chex.assert_trees_all_equal(np.asarray(mod.qk_matrix[...]), w0)
  assert not np.allclose(np.asarray(mod.v.kernel[...]), v0)
  # The trainer's split puts W in model_state, not in params.
  _, params, _, rest = steps_lib.split_model(mod)
  assert "qk_matrix" in rest and "qk_matrix" not in params
  assert "q" not in params and "k" not in params and "v" in params


def test_random_qk_registered():
  check_registered("random_qk", "module", fn=random_qk_attention, module=RandomQKAttention)


def test_random_qk_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("random_qk", RandomQKAttention)
