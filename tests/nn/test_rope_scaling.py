"""Scaled RoPE (attnlab.nn.positions: linear, llama3, yarn) against Hugging Face transformers.

tests/fixtures/hf/rope_scaling.npz was written by scripts/make_hf_fixtures.py (transformers
5.24): for each scaling dict, ``LlamaRotaryEmbedding``'s inverse frequencies, attention
scaling and cos / sin at positions 0..63 (head_dim 16, theta 10000). The expected values come
from transformers, not from attnlab. Whole-model parity with scaled RoPE (logits, greedy
generation) is in tests/models/test_pretrained.py.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.nn import MultiHeadAttention
from attnlab.nn import positions

TABLE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "rope_scaling.npz")
CASES = ("linear", "llama3", "yarn", "yarn_mscale", "yarn_attention_factor")
HEAD_DIM, THETA = 16, 10000.0


def case(name):
  table = np.load(TABLE)
  return ({k.split("/", 1)[1]: table[k] for k in table.files if k.startswith(name + "/")},
          json.loads(str(table[name + "/config"])))


def test_table_has_every_case():
  names = {k.split("/")[0] for k in np.load(TABLE).files}
  assert names == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_frequencies_match_transformers(name):
  exp, spec = case(name)
  scaling = positions.rope_scaling(spec)
  inv_freq, factor = positions.rope_frequencies(HEAD_DIM, THETA, scaling)
  # transformers computes in float32, attnlab in float64 then rounds: a few ulps.
  np.testing.assert_allclose(inv_freq, exp["inv_freq"], rtol=1e-6)
  np.testing.assert_allclose(factor, exp["attention_scaling"], rtol=1e-6)
  # the scaling does something (each case differs from plain RoPE)
  plain = positions.rope_frequencies(HEAD_DIM, THETA)[0]
  assert np.abs(inv_freq - plain).max() > 1e-3 or abs(factor - 1.0) > 1e-3


@pytest.mark.parametrize("name", CASES)
def test_apply_rope_matches_transformers_rotation(name):
  """apply_rope(x) == x * cos + rotate_half(x) * sin with transformers' cos / sin
  (``apply_rotary_pos_emb`` of modeling_llama)."""
  exp, spec = case(name)
  x = np.random.default_rng(0).normal(size=(2, 64, 3, HEAD_DIM)).astype(np.float32)
  cos, sin = exp["cos"][None, :, None], exp["sin"][None, :, None]
  rotated = np.concatenate([-x[..., HEAD_DIM // 2:], x[..., :HEAD_DIM // 2]], -1)
  want = x * cos + rotated * sin
  got = positions.apply_rope(jnp.asarray(x), jnp.arange(64), base=THETA,
                             scaling=positions.rope_scaling(spec))
  # angles up to 63 rad in float32: rounding of position * inv_freq differs by op order.
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_unscaled_is_unchanged():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 9, 2, 8)), jnp.float32)
  for none in (None, {}, {"rope_type": "default"}, {"type": "default", "rope_theta": 5.0}):
    assert positions.rope_scaling(none) is None
  np.testing.assert_array_equal(
      np.asarray(positions.apply_rope(x, jnp.arange(9), scaling=None)),
      np.asarray(positions.apply_rope(x, jnp.arange(9))))


def test_module_uses_scaling():
  """MultiHeadAttention with rope_scaling rotates q/k with the scaled frequencies: linear
  scaling by 2 at positions 2p equals no scaling at positions p (position interpolation)."""
  from flax import nnx
  kw = dict(position="rope", causal=True)
  scaled = MultiHeadAttention(16, 2, rope_scaling={"type": "linear", "factor": 2.0},
                              rngs=nnx.Rngs(0), **kw)
  plain = MultiHeadAttention(16, 2, rngs=nnx.Rngs(0), **kw)  # same parameters
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 6, 16)), jnp.float32)
  pos = jnp.arange(6)
  np.testing.assert_allclose(np.asarray(scaled(x, positions=2 * pos)),
                             np.asarray(plain(x, positions=pos)), atol=1e-5)
  assert np.abs(np.asarray(scaled(x)) - np.asarray(plain(x))).max() > 1e-4


@pytest.mark.parametrize("spec, match", [
    ({"rope_type": "dynamic", "factor": 2.0}, "dynamic"),
    ({"rope_type": "longrope", "factor": 2.0}, "longrope"),
    ({"rope_type": "linear"}, "factor"),
    ({"rope_type": "linear", "factor": 0.0}, "factor must be > 0"),
    ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, "beta_fast"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64},
     "low_freq_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 64}, "high_freq_factor"),
    ({"rope_type": "yarn", "factor": 2.0}, "original_max_position_embeddings"),
    ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
     "partial_rotary_factor"),
    ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}, "low_freq_factor must be > 0"),
])
def test_bad_scaling_is_refused(spec, match):
  with pytest.raises(ValueError, match=match):
    positions.rope_scaling(spec)
  with pytest.raises(TypeError, match="rope_scaling"):
    positions.rope_scaling([("rope_type", "linear")])


def test_non_numeric_scaling_value_is_a_type_error_naming_it():
  with pytest.raises(TypeError, match="rope_scaling factor must be a number"):
    positions.rope_scaling({"rope_type": "linear", "factor": "2"})
