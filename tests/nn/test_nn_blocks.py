"""TransformerBlock vs a hand-written pre-LN block from its own parameters."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.nn import attention as A
from attnlab.nn import blocks as Bl
from attnlab.nn.partitioning import logical_axes

E, H, M = 16, 4, 32


def make_block(norm="layernorm", mlp="gelu", dropout=0.0):
  rngs = nnx.Rngs(0)
  attn = A.MultiHeadAttention(E, H, causal=True, position="rope", rngs=rngs)
  return Bl.TransformerBlock(E, M, attn, norm=norm, mlp=mlp, dropout=dropout, rngs=rngs)


def np_norm(x, mod, kind, eps=1e-6):
  x = np.asarray(x, np.float64)
  scale = np.asarray(mod.scale[...])
  if kind == "layernorm":
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + np.asarray(mod.bias[...])
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def np_mlp(x, mod, kind):
  gelu = lambda z: np.asarray(jax.nn.gelu(jnp.asarray(z)), np.float64)  # tanh approximation
  silu = lambda z: z / (1 + np.exp(-z))
  if kind == "gelu":
    return gelu(x @ np.asarray(mod.wi.kernel[...])) @ np.asarray(mod.wo.kernel[...])
  g = x @ np.asarray(mod.gate.kernel[...])
  u = x @ np.asarray(mod.up.kernel[...])
  return (silu(g) * u) @ np.asarray(mod.wo.kernel[...])


@pytest.mark.parametrize("norm, mlp", [("layernorm", "gelu"), ("rmsnorm", "swiglu")])
def test_block_matches_manual_pre_ln(norm, mlp):
  block = make_block(norm, mlp)
  x = jax.random.normal(jax.random.key(0), (2, 5, E))
  call = nnx.jit(lambda m, x: m(x))
  h = np_norm(x, block.norm1, norm)
  x1 = np.asarray(x) + np.asarray(call(block.attention, jnp.asarray(h, jnp.float32)))
  want = x1 + np_mlp(np_norm(x1, block.norm2, norm), block.mlp, mlp)
  chex.assert_trees_all_close(call(block, x), want, rtol=1e-7, atol=1e-4)


def test_dropout_only_when_not_deterministic():
  block = make_block(dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 5, E))
  chex.assert_trees_all_equal(block(x), block(x, deterministic=True))
  a, b = block(x, deterministic=False), block(x, deterministic=False)
  assert not np.allclose(a, block(x))
  assert not np.allclose(a, b)  # fresh masks each call


def test_block_returns_weights_and_passes_head_mask():
  block = make_block()
  x = jax.random.normal(jax.random.key(0), (2, 5, E))
  y, w = block(x, return_weights=True, head_mask=jnp.zeros(H))
  assert w.shape == (2, H, 5, 5)
  # With every head masked the attention branch is zero: only the MLP branch remains.
  x1 = np.asarray(x, np.float64)
  want = x1 + np_mlp(np_norm(x1, block.norm2, "layernorm"), block.mlp, "gelu")
  chex.assert_trees_all_close(y, want, rtol=1e-7, atol=1e-4)


def test_factories_and_registration():
  with pytest.raises(ValueError, match=r"norm must be one of \[.*'layernorm'.*'rmsnorm'"):
    Bl.make_norm("batchnorm", E, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"mlp must be one of \[.*'gelu'.*'swiglu'"):
    Bl.make_mlp("relu", E, M, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dropout"):
    make_block(dropout=1.5)

  class ScaleOnly(nnx.Module):
    def __init__(self, dim, *, eps, dtype, param_dtype, rngs):
      self.scale = nnx.Param(jnp.full((dim,), 2.0))

    def __call__(self, x):
      return x * self.scale[...]

  Bl.register_norm("scale_only_test", ScaleOnly)
  try:
    assert isinstance(Bl.make_norm("scale_only_test", E, rngs=nnx.Rngs(0)), ScaleOnly)
  finally:
    Bl._NORMS.pop("scale_only_test")


def test_layer_aware_norm_factory_gets_layer_index():
  seen = []

  def factory(dim, *, eps, dtype, param_dtype, rngs, layer_index=None):
    seen.append((layer_index, None))
    return nnx.RMSNorm(dim, epsilon=eps, rngs=rngs)

  from attnlab.models import build_model, default_model_config
  cfg = default_model_config()
  cfg.update(dict(num_layers=2, d_model=E, num_heads=H, mlp_dim=M, max_len=8,
                  norm="layer_aware_test"))
  Bl.register_norm("layer_aware_test", factory)
  try:
    build_model(cfg, vocab_size=8, rngs=nnx.Rngs(0))
  finally:
    Bl._NORMS.pop("layer_aware_test")
  assert [i for i, _ in seen] == [0, 0, 1, 1, None]  # norm1, norm2 per block; final norm


def test_block_param_logical_axes():
  block = make_block(norm="layernorm", mlp="swiglu")
  assert logical_axes(block.norm1.scale) == ("embed",)
  assert logical_axes(block.mlp.gate.kernel) == ("embed", "mlp")
  assert logical_axes(block.mlp.wo.kernel) == ("mlp", "embed")
