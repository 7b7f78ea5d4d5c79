"""Momentum attention ("momentum_ema"): the pure function vs a naive loop written here (numpy
float64 values, the same loop in jnp for gradients) and its special cases; run by a plain
``MultiHeadAttention`` (vs naive, KV-cache decoding) and a tiny DecoderLM from the catalogue
overrides."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.core.mechanisms.momentum import momentum_attention
from attnlab.nn import attention as A

from _helpers import (ATOL, CAUSAL_T, H, K, OFF, RTOL, TQ, call, causal_allowed,  # noqa: I100
                      check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, f64, jit_call, make, naive_out, naive_softmax, output,
                      project, qkv, rep, softmax_ref, x_input)


def naive_momentum(xp, q, k, v, mom, eta, allowed, off, include_current=False):
  h, d = q.shape[2], q.shape[3]
  tq, tk = q.shape[1], k.shape[1]
  p = naive_softmax(xp, xp.einsum("bihd,bjhd->bhij", q, rep(xp, k, h)) / math.sqrt(d), allowed)
  out = naive_out(xp, p, v, h)
  vv = rep(xp, v, h)
  ema = []
  for i in range(tq):  # loop over query rows: sum_{j < t} mom^(t - j) v_j
    t = i + off
    acc = 0.0
    for j in range(tk):
      if (j < t or (include_current and j == t)) and allowed[i, j]:
        acc = acc + mom ** (t - j) * vv[:, j]
    ema.append(acc + 0.0 * vv[:, 0])
  return out + eta * xp.stack(ema, axis=1)


# ---------------------------------------------------------------------------------------------
# Pure function.


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_vs_naive_and_grads(include_current):
  q, k, v = qkv(50)
  allowed = causal_allowed()

  def impl(q, k, v):
    return attnlab.attention(q, k, v, mechanism="momentum_ema", mask=masks.CausalMask(OFF),
                             q_offset=OFF, momentum=0.8, eta=0.7,
                             include_current=include_current)

  got = check_grads(impl, lambda *a: naive_momentum(jnp, *a, 0.8, 0.7, allowed, OFF,
                                                    include_current), [q, k, v])
  want = naive_momentum(np, *f64(q, k, v), 0.8, 0.7, allowed, OFF, include_current)
  chex.assert_trees_all_close(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_momentum_special_cases():
  """eta = 0 is softmax attention; with queries that cannot discriminate keys (q = 0) and
  momentum 1, include_current, it is the running mean plus the running sum."""
  q, k, v = qkv(51)
  got = jit_call(momentum_attention, q, k, v, mask=masks.CausalMask(OFF), q_offset=OFF, eta=0.0)
  chex.assert_trees_all_close(np.asarray(got), softmax_ref(q, k, v, OFF), rtol=RTOL, atol=ATOL)
  z = np.zeros_like(q)
  got = jit_call(momentum_attention, z, k, v, mask=masks.CausalMask(OFF), q_offset=OFF,
                 momentum=1.0, include_current=True)
  vv = np.repeat(v, H // K, axis=2)
  csum = np.cumsum(vv, axis=1)[:, OFF:]
  cnt = (np.arange(TQ) + OFF + 1)[None, :, None, None]
  chex.assert_trees_all_close(np.asarray(got), csum / cnt + csum, rtol=RTOL, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Through MultiHeadAttention (no module of its own).


def test_momentum_through_multihead_attention():
  mod = make(A.MultiHeadAttention, mechanism="momentum_ema",
             mechanism_kwargs=dict(momentum=0.5, eta=0.3))
  x = x_input(5)
  q, k, v = project(x, mod)
  want = output(naive_momentum(np, q, k, v, 0.5, 0.3, CAUSAL_T, 0), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)


def test_momentum_registered():
  check_registered("momentum_ema", "attention", fn=momentum_attention,
                   module=A.MultiHeadAttention)
  assert attnlab.get_mechanism("momentum_ema").kind == "attention"


def test_momentum_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("momentum_ema", A.MultiHeadAttention)
