"""Deconstructing Attention "RndEmbQK" ("mixer_fixed"): ``FixedQKMixer`` gives the same
attention matrix for every input, matches a naive recomputation from its own parameters, keeps
its frozen embedding out of the parameters; causal in a tiny DecoderLM."""

import math

import chex
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.nn.mechanisms._mixer_base import FrozenRandom
from attnlab.nn.mechanisms.mixer_fixed import FixedQKMixer

from _helpers import SOW_WARNINGS, check_decoder_is_causal_and_decodes  # noqa: I100

pytestmark = SOW_WARNINGS


def test_mixer_fixed_decoder_is_causal():
  check_decoder_is_causal_and_decodes("mixer_fixed")


def test_fixed_mixer_is_input_independent_and_matches_naive():
  """RndEmbQK: Q, K from a frozen random positional embedding, so the attention matrix is the
  same for every input (the paper's 'fixed attention maps'); naive recomputation from the
  module's parameters."""
  mod = FixedQKMixer(16, 2, num_kv_heads=1, position="none", max_len=8, num_layers=2,
                     layer_index=0, causal=True, rngs=nnx.Rngs(3))
  x1, x2 = (jnp.asarray(np.random.RandomState(s).standard_normal((2, 6, 16)), jnp.float32)
            for s in (1, 2))
  y1, w1 = mod(x1, return_weights=True)
  _, w2 = mod(x2, return_weights=True)
  chex.assert_trees_all_close(w1, w2, rtol=0, atol=1e-7)
  assert isinstance(mod.embedding, FrozenRandom)
  eps = np.asarray(mod.embedding[...], np.float64)[:6]
  q = np.einsum("te,ehd->thd", eps, np.asarray(mod.w_q[...], np.float64))
  k = np.einsum("te,ehd->thd", eps, np.asarray(mod.w_k[...], np.float64))
  v = np.einsum("bte,ehd->bthd", np.asarray(x1, np.float64), np.asarray(mod.w_v[...]))
  s = np.einsum("ihd,jhd->hij", q, k[:, [0, 0]]) / math.sqrt(8)
  s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  chex.assert_trees_all_close(np.asarray(w1[0]), w, rtol=1e-4, atol=1e-6)
  out = np.einsum("hij,bjhd->bihd", w, v[:, :, [0, 0]])
  naive = np.einsum("bihd,hde->bie", out, np.asarray(mod.w_o[...], np.float64))
  chex.assert_trees_all_close(np.asarray(y1), naive, rtol=1e-4, atol=1e-5)
  # The frozen embedding is not a parameter (the optimizer never sees it).
  assert "embedding" not in nnx.to_pure_dict(nnx.state(mod, nnx.Param))
