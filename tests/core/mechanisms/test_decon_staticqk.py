"""Deconstructing Attention "StaticEmbQK" ("decon_staticqk"): in a tiny DecoderLM the later
layers' attention weights come from layer 0's normalised input only (naive recomputation from
the embeddings); causal, with shared-tap KV-cache decoding; ``StaticEmbQKAttention``'s typed
arguments."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import models
from attnlab.nn.mechanisms.decon_staticqk import StaticEmbQKAttention

from _helpers import (MIX_VOCAB, SOW_WARNINGS, check_decoder_is_causal_and_decodes,  # noqa: I100
                      mixer_tokens, tiny_cfg)

pytestmark = SOW_WARNINGS


def test_decon_staticqk_decoder_is_causal_and_decodes():
  check_decoder_is_causal_and_decodes("decon_staticqk")


def test_static_qk_uses_layer0_input_only():
  """StaticEmbQK: layer 1's attention weights come from layer 0's (normalised) input, not from
  the current hidden state: perturbing layer 0's attention and MLP changes the hidden states
  but not layer 1's weights; naive recomputation from the embeddings."""
  cfg = tiny_cfg("decon_staticqk", position="none", num_layers=3)
  model = models.build_model(cfg, vocab_size=MIX_VOCAB, rngs=nnx.Rngs(4))
  toks = mixer_tokens(3)
  logits, w = model(toks, record_weights_layers=[1, 2])
  blk0 = model.stack.blocks[0]
  for p in (blk0.attention.v.kernel, blk0.mlp.wi.kernel):
    p[...] = p[...] * 3.0 + 0.1
  logits2, w2 = model(toks, record_weights_layers=[1, 2])
  assert float(jnp.abs(logits - logits2).max()) > 1e-3
  for layer in (1, 2):
    chex.assert_trees_all_close(w[layer], w2[layer], rtol=1e-5, atol=1e-7)
  # Naive: e = LN_0(Emb(t)); A_1 = softmax(e W_q1 (e W_k1)^T / sqrt(d)).
  emb = np.asarray(model.embedder.tokens.embedding[...], np.float64)[np.asarray(toks)]
  n = blk0.norm1
  mu = emb.mean(-1, keepdims=True)
  e = (emb - mu) / np.sqrt(((emb - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
  e = e * np.asarray(n.scale[...]) + np.asarray(n.bias[...])
  att1 = model.stack.blocks[1].attention
  q = np.einsum("bte,ehd->bhtd", e, np.asarray(att1.q.kernel[...], np.float64))
  k = np.einsum("bte,ehd->bhtd", e, np.asarray(att1.k.kernel[...], np.float64))
  s = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8)
  s = np.where(np.tril(np.ones((8, 8), bool)), s, -np.inf)
  a = np.exp(s - s.max(-1, keepdims=True))
  chex.assert_trees_all_close(np.asarray(w[1]), a / a.sum(-1, keepdims=True), rtol=1e-4,
                              atol=1e-6)
  # Nothing stays behind in the shared tap after a forward pass.
  assert model.stack.blocks[0].attention.tap.value is None


def test_static_qk_module_typed_arguments():
  """Outside a stack the static input comes from ``embeddings=`` (layer 0 of a stack publishes
  it); the class fixes its mechanism."""
  layer1 = StaticEmbQKAttention(16, 2, layer_index=1, causal=True, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 4, 16))
  with pytest.raises(ValueError, match="static input"):
    layer1(x)
  y = nnx.eval_shape(lambda m, x: m(x, embeddings=x), layer1, x)
  chex.assert_shape(y, (2, 4, 16))
  with pytest.raises(TypeError):
    StaticEmbQKAttention(16, 2, mechanism="softmax", rngs=nnx.Rngs(0))
