"""LayerNorm Scaling ("Curse of Depth", arXiv 2502.05795): ``scaled_layer_norm`` vs a naive
formula (values, gradients), output variance 1/l; in a model, every block norm scaled by its
depth (the final norm not), the same parameters as the plain model; the catalogue entry."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.core.variants import depth_scaling
from attnlab.models import count_params, default_model_config
from attnlab.nn.variants import ScaledNorm

from _variant_helpers import B, E, T, check_block_entry, model_of, np_ln, rnd  # noqa: I100


# ---------------------------------------------------------------------------------------------
# Pure functions.


def naive_scaled_norm(x, scale, bias, layer, eps, rms):
  if rms:
    y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
  else:
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
  y = y * scale + (0.0 if bias is None else bias)
  return y / math.sqrt(layer + 1)


@pytest.mark.parametrize("rms, layer", [(False, 3), (True, 0)])
def test_scaled_norm_matches_naive_with_grads(rms, layer):
  x, scale, bias = rnd(0, (2, 3, 8), 3.0), 1 + rnd(1, (8,), 0.1), None if rms else rnd(2, (8,))
  got = depth_scaling.scaled_layer_norm(
      jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32),
      None if bias is None else jnp.asarray(bias, jnp.float32), layer_index=layer, eps=1e-6,
      rms=rms)
  chex.assert_trees_all_close(got, naive_scaled_norm(x, scale, bias, layer, 1e-6, rms),
                              rtol=1e-5, atol=1e-5)

  def f(fn):
    return lambda xx, s: jnp.sum(jnp.cos(fn(xx, s)) * jnp.arange(8.0))

  def ref(xx, s):
    if rms:
      y = xx * jax.lax.rsqrt(jnp.mean(xx * xx, -1, keepdims=True) + 1e-6)
    else:
      mu = jnp.mean(xx, -1, keepdims=True)
      y = (xx - mu) * jax.lax.rsqrt(jnp.mean((xx - mu) ** 2, -1, keepdims=True) + 1e-6)
    return y * s / jnp.sqrt(layer + 1.0)

  mine = lambda xx, s: depth_scaling.scaled_layer_norm(xx, s, None, layer_index=layer,  # noqa: E731
                                                       rms=rms)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32))
  for a, b in zip(jax.grad(f(mine), (0, 1))(*args), jax.grad(f(ref), (0, 1))(*args)):
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-5)


def test_scaled_norm_output_variance_is_one_over_depth():
  """At init (scale 1, bias 0) LN output has unit per-token variance, so the scaled output's
  variance is 1/l: the paper's mechanism for damping the residual-variance growth."""
  x = jnp.asarray(rnd(4, (4, 6, 64), 5.0), jnp.float32)
  for layer in range(5):
    y = depth_scaling.scaled_layer_norm(x, jnp.ones(64), jnp.zeros(64), layer_index=layer)
    chex.assert_trees_all_close(jnp.var(y, axis=-1), 1.0 / (layer + 1), rtol=1e-3)
  assert depth_scaling.depth_scale(3) == 0.5
  with pytest.raises(ValueError, match="layer_index"):
    depth_scaling.depth_scale(-1)


# ---------------------------------------------------------------------------------------------
# Catalogue entry and model config.


def test_layernorm_scaling_catalogue_entry_and_default_config():
  check_block_entry("layernorm_scaling")
  assert default_model_config().norm == "layernorm"



# ---------------------------------------------------------------------------------------------
# Model.


@pytest.mark.parametrize("norm", ["layernorm_scaled", "rmsnorm_scaled"])
def test_layernorm_scaling_in_blocks(norm):
  m = model_of(num_layers=3, norm=norm)
  x = jax.random.normal(jax.random.key(0), (B, T, E)) * 2
  for i, blk in enumerate(m.stack.blocks):
    for nm in (blk.norm1, blk.norm2):
      assert isinstance(nm, ScaledNorm) and nm.layer_index == i
      xx = np.asarray(x, np.float64)
      if norm == "rmsnorm_scaled":
        ref = xx / np.sqrt((xx ** 2).mean(-1, keepdims=True) + 1e-6) * np.asarray(nm.scale[...])
      else:
        ref = np_ln(xx, nm)
      chex.assert_trees_all_close(nm(x), ref / math.sqrt(i + 1), rtol=1e-4, atol=1e-5)
  assert not isinstance(m.final_norm, ScaledNorm)  # the final norm is not depth-scaled
  # Same parameters as the unscaled model (only the forward changes).
  base = model_of(num_layers=3, norm=norm.replace("_scaled", ""))
  assert count_params(base) == count_params(m)
