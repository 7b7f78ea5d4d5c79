"""Deconstructing Attention "MLP" variant ("mixer_none"): the gated MLP vs numpy float64 (values,
gradients by central differences) and token locality; ``MixerNone`` in a tiny DecoderLM
(causal) and its parameter count matching attention's."""

import math

import jax
import numpy as np
from flax import nnx

import attnlab.nn
from attnlab.core.mechanisms.mixer_none import gated_mlp
from attnlab.nn.mechanisms.mixer_none import MixerNone

from _helpers import (SOW_WARNINGS, assert_close, check,  # noqa: I100
                      check_decoder_is_causal_and_decodes, rand, silu)

pytestmark = SOW_WARNINGS


def test_gated_mlp_matches_naive_and_is_token_local():
  x = rand(2, 5, 4, seed=1)
  wg, wu, wd = rand(4, 6, seed=2), rand(4, 6, seed=3), rand(6, 4, seed=4)

  def naive(xp, x, wg, wu, wd):
    return (silu(xp, x @ wg) * (x @ wu)) @ wd

  check(gated_mlp, lambda *a: naive(np, *a), (x, wg, wu, wd))
  # No token mixing: permuting the tokens permutes the outputs.
  perm = np.array([3, 0, 4, 1, 2])
  assert_close(gated_mlp(x[:, perm], wg, wu, wd), gated_mlp(x, wg, wu, wd)[:, perm])


def test_mixer_none_decoder_is_causal():
  check_decoder_is_causal_and_decodes("mixer_none")


def test_mixer_none_matches_attention_parameter_count():
  def count(make):
    state = nnx.state(nnx.eval_shape(make), nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))

  mix = count(lambda: MixerNone(12, 2, max_len=8, num_layers=2, layer_index=0, causal=True,
                                rngs=nnx.Rngs(0)))
  mha = count(lambda: attnlab.nn.MultiHeadAttention(12, 2, causal=True, rngs=nnx.Rngs(0)))
  assert mix == mha == 4 * 12 * 12
