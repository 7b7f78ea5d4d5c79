"""LayerNorm Scaling: pre-LN outputs scaled by ``1 / sqrt(layer)``.

Paper: "The Curse of Depth in Large Language Models" (Sun et al., arXiv 2502.05795). In pre-LN
transformers the variance of the residual stream grows with depth, so deep layers become close
to identity maps. LayerNorm Scaling multiplies the output of each block's layer normalisation
by the inverse square root of the layer's depth::

    h = LN(x) / sqrt(l),     l = 1, ..., L  (1-based depth of the block)
    x' = x + Attn(h_1),  x'' = x' + FFN(h_2)        (both pre-LNs of block l are scaled)

which bounds the output variance growth to polynomial in ``L``. ``layer_index`` here is the
0-based index used across attnlab, so ``l = layer_index + 1``. Both LayerNorm and RMSNorm
(``rms=True``) forms are given. Departure: none in the block; the final norm before the LM head
is left unscaled (the paper scales the per-layer pre-LNs only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from attnlab.core import registry

Array = jax.Array


def depth_scale(layer_index: int) -> float:
  """``1 / sqrt(layer_index + 1)`` (``layer_index`` 0-based)."""
  if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
    raise ValueError(f"layer_index must be an int >= 0 (0-based), got {layer_index!r}")
  return float(1.0 / (layer_index + 1) ** 0.5)


def scaled_layer_norm(x: Array, scale: Array, bias: Array | None, *, layer_index: int,
                      eps: float = 1e-6, rms: bool = False) -> Array:
  """``(LN(x) * scale + bias) / sqrt(layer_index + 1)`` over the last axis (float32 stats).

  ``rms=True``: RMSNorm ``x / sqrt(mean(x^2) + eps) * scale`` instead of LayerNorm.
  """
  xf = x.astype(jnp.float32)
  if rms:
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  else:
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + eps)
  y = y * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return (y * depth_scale(layer_index)).astype(x.dtype)


registry.register_mechanism(
    'layernorm_scaling', kind='block',
    paper='The Curse of Depth in Large Language Models (arXiv 2502.05795)',
    description='pre-LN outputs scaled by 1/sqrt(l), l = 1-based layer depth (norm '
                "'layernorm_scaled'; 'rmsnorm_scaled' for RMSNorm)",
    complexity='O(T d) per norm (as LayerNorm)')
