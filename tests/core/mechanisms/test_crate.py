"""CRATE multi-head subspace self-attention (MSSA): the pure function vs a naive formula
written here (values, gradients) and the symmetry of q == k; ``CRATEAttention`` (one projection
as query, key and value) vs naive, its constructor errors, KV-cache decoding, and a tiny
DecoderLM from the catalogue overrides."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import masks
from attnlab.core.mechanisms.crate import crate_attention, crate_mssa

from attnlab.nn.mechanisms.crate import CRATEAttention

from _helpers import (ATOL, B, CAUSAL_T, D, D_MOD, H, RTOL, TK, call,  # noqa: I100
                      causal_allowed, check_decode, check_decoder_lm_forward_grad, check_grads,
                      check_registered, jattn, jit_call, make, naive_out, naive_softmax, output,
                      rand, x_input)


# ---------------------------------------------------------------------------------------------
# Pure function.


def test_crate_mssa_vs_naive_and_grads():
  w = rand(B, TK, H, D, seed=70)
  allowed = causal_allowed(TK, TK, 0)

  def naive(xp, w):
    s = xp.einsum("bihd,bjhd->bhij", w, w) / math.sqrt(D)
    return naive_out(xp, naive_softmax(xp, s, allowed), w, H)

  impl = lambda w: crate_mssa(w, mask=masks.CausalMask())  # noqa: E731
  got = check_grads(impl, lambda w: naive(jnp, w), [w])
  chex.assert_trees_all_close(np.asarray(got), naive(np, w.astype(np.float64)), rtol=RTOL,
                              atol=ATOL)
  # q == k: unmasked scores are symmetric, so w_ij Z_i = w_ji Z_j with Z the row normalisers.
  _, p = jattn(w, w, w, mechanism="crate", return_weights=True)
  p = np.asarray(p, np.float64)
  s = np.einsum("bihd,bjhd->bhij", w, w) / math.sqrt(D)
  z = np.exp(s).sum(-1)
  chex.assert_trees_all_close(p * z[..., None], np.swapaxes(p * z[..., None], -1, -2),
                              rtol=1e-4)
  with pytest.raises(ValueError, match="same shape"):  # noqa: PT011
    jit_call(crate_attention, w, w[:, :, :2], w[:, :, :2])


# ---------------------------------------------------------------------------------------------
# Module.


def test_crate_q_equals_k_equals_v():
  mod = make(CRATEAttention, num_kv_heads=None, position="learned")
  assert mod.k is None and mod.v is None
  x = x_input(7)
  q, k, v = jax.jit(lambda x: mod.project_qkv(x))(x)
  u = np.asarray(mod.q.kernel[...], np.float64)
  want = np.einsum("bte,ehd->bthd", np.asarray(x, np.float64), u)
  for a in (q, k, v):
    chex.assert_trees_all_close(np.asarray(a), want, rtol=1e-5, atol=1e-5)
  s = np.einsum("bihd,bjhd->bhij", want, want) / math.sqrt(D_MOD)
  want_out = output(naive_out(np, naive_softmax(np, s, CAUSAL_T), want, H), mod)
  full = call(mod, x)
  chex.assert_trees_all_close(np.asarray(full), want_out, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  with pytest.raises(ValueError, match="num_kv_heads"):
    make(CRATEAttention, position="learned")
  with pytest.raises(ValueError, match="rope"):
    make(CRATEAttention, num_kv_heads=None, position="rope")


def test_crate_registered():
  check_registered("crate", "module", fn=crate_attention, module=CRATEAttention)


def test_crate_decoder_lm_forward_grad():
  check_decoder_lm_forward_grad("crate", CRATEAttention)
