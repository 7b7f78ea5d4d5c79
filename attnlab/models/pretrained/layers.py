"""Layers that pretrained architectures need beyond attnlab's defaults (registered by name).

* ``"gelu_bias"`` MLP: ``wo(gelu_tanh(wi(x) + b_i)) + b_o``, GPT-2's MLP (its "gelu_new" is
  the tanh approximation, ``jax.nn.gelu``'s default).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn import blocks as blocks_lib
from attnlab.nn.partitioning import logical_init


def _dense(d_in: int, d_out: int, names: tuple[str, str], *, dtype: Any, param_dtype: Any,
           rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=True, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=logical_init(nnx.initializers.lecun_normal(), names),
                    bias_init=logical_init(nnx.initializers.zeros_init(), names[1:]),
                    rngs=rngs)


class GeluBiasMLP(nnx.Module):
  """``wo(gelu(wi(x)))`` with biases: ``[..., d_model]`` -> ``[..., d_model]`` (GPT-2)."""

  def __init__(self, d_model: int, mlp_dim: int, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.wi = _dense(d_model, mlp_dim, ("embed", "mlp"), **kw)
    self.wo = _dense(mlp_dim, d_model, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.wo(jax.nn.gelu(self.wi(x), approximate=True))


blocks_lib.register_mlp("gelu_bias", GeluBiasMLP)
