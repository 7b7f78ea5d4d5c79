"""Attention drop ("What Matters in Transformers?", arXiv 2406.15786): the attention
importance score vs its naive formula (values, gradient) and properties, ``layers_to_drop`` and
``check_drop_layers``; in a model, a dropped attention sublayer and the per-layer importance
from a manual walk through the stack; the catalogue entry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.core.variants import attention_drop
from attnlab.models import default_model_config
from attnlab.nn import variants

from _variant_helpers import B, E, T, check_block_entry, embed, model_of, rnd, tokens  # noqa: I100


# ---------------------------------------------------------------------------------------------
# Pure functions.


def test_attention_importance_matches_naive_and_properties():
  x = rnd(0, (2, 5, 8))
  y = x + rnd(1, (2, 5, 8), 0.5)
  cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
  got = attention_drop.attention_importance(jnp.asarray(x, jnp.float32),
                                            jnp.asarray(y, jnp.float32))
  chex.assert_trees_all_close(got, 1 - cos.mean(), rtol=1e-5)
  w = np.zeros((2, 5))
  w[0, :3] = 1.0
  got = attention_drop.attention_importance(jnp.asarray(x, jnp.float32),
                                            jnp.asarray(y, jnp.float32),
                                            token_weights=jnp.asarray(w))
  chex.assert_trees_all_close(got, 1 - cos[0, :3].mean(), rtol=1e-5)
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  # An identity sublayer (Y = X) scores 0; cosine is scale invariant; scores lie in [0, 2].
  chex.assert_trees_all_close(attention_drop.attention_importance(xj, xj), 0.0, rtol=1e-7,
                              atol=1e-6)
  chex.assert_trees_all_close(attention_drop.attention_importance(3 * xj, 3 * yj),
                              attention_drop.attention_importance(xj, yj), rtol=1e-5)
  chex.assert_trees_all_close(attention_drop.attention_importance(xj, -xj), 2.0, rtol=1e-6)
  g = jax.grad(lambda a: attention_drop.attention_importance(xj, a))(yj)
  g_ref = jax.grad(lambda a: 1 - jnp.mean(jnp.sum(xj * a, -1) / (
      jnp.linalg.norm(xj, axis=-1) * jnp.linalg.norm(a, axis=-1))))(yj)
  chex.assert_trees_all_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_layers_to_drop_and_check():
  assert attention_drop.layers_to_drop([0.3, 0.01, 0.2, float("nan"), 0.02], 2) == (1, 4)
  assert attention_drop.layers_to_drop([0.3, 0.1], 0) == ()
  with pytest.raises(ValueError):
    attention_drop.layers_to_drop([0.3, float("nan")], 2)
  assert attention_drop.check_drop_layers((3, 1), 4) == (1, 3)
  for bad in [(4,), (1, 1), (-1,), (True,)]:
    with pytest.raises(ValueError, match="drop_attention_layers"):
      attention_drop.check_drop_layers(bad, 4)


# ---------------------------------------------------------------------------------------------
# Catalogue entry and model config.


def test_attention_drop_catalogue_entry_and_default_config():
  check_block_entry("attention_drop")
  assert default_model_config().drop_attention_layers == ()



# ---------------------------------------------------------------------------------------------
# Model.


def test_dropped_attention_sublayer_and_importance():
  m = model_of(num_layers=3, drop_attention_layers=(1,))
  blk = m.stack.blocks[1]
  assert blk.attention is None and blk.norm1 is None
  assert "attention" not in nnx.state(m, nnx.Param)["stack"]["blocks"][1]
  x = jax.random.normal(jax.random.key(0), (B, T, E))
  chex.assert_trees_all_close(blk(x), x + blk.mlp(blk.norm2(x)), rtol=1e-7, atol=1e-6)
  with pytest.raises(ValueError, match="dropped"):
    m(tokens(), record_weights_layers=(1,))

  toks = tokens(4)
  scores = variants.attention_layer_importance(m, toks)
  assert scores.shape == (3,) and np.isnan(scores[1])
  # Naive: 1 - mean cos(X, X + Attn(LN(X))) from a manual walk through the stack.
  x, pos = embed(m, toks)
  want = []
  for b in m.stack.blocks:
    if b.attention is not None:
      y = x + b.attention(b.norm1(x), positions=pos)
      xx, yy = np.asarray(x, np.float64), np.asarray(y, np.float64)
      cos = (xx * yy).sum(-1) / np.linalg.norm(xx, axis=-1) / np.linalg.norm(yy, axis=-1)
      want.append(1 - cos.mean())
    x = b(x, positions=pos)
  chex.assert_trees_all_close(np.asarray(scores)[np.array([0, 2])], np.asarray(want),
                              rtol=1e-4)
  # Paper's premise: a sublayer whose output equals its input is redundant (score 0).
  o = m.stack.blocks[2].attention.o.kernel
  o[...] = jnp.zeros_like(o[...])
  scores = variants.attention_layer_importance(m, toks)
  chex.assert_trees_all_close(np.asarray(scores)[2], 0.0, rtol=1e-7, atol=1e-6)
  assert variants.layers_to_drop(scores, 1) == (2,)
  assert not m.stack.blocks[0].capture_attention_io
  assert not hasattr(m.stack.blocks[0], "attention_io")
