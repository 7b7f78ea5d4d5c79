"""EchoAtt sharing layers: own value and output projections, the anchor's attention weights.

``EchoAttention`` replaces a sharing layer's attention module (the model builder places it from
``config.model.echo``); the stack (``attnlab.nn.blocks.TransformerStack``) records the anchor
layer's weights ``[B, H, T, S]`` and passes them as ``shared_weights``. The call ends in
``attnlab.core.variants.echo.echo_attention``. With a KV cache the module caches only its values
(the anchor's weights already cover the cache positions).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.variants import echo as echo_core
from attnlab.nn.common import check_positive_int, resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array


def _fan_in(in_axis, out_axis):
  return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis,
                                           out_axis=out_axis)


class EchoAttention(nnx.Module):
  """Value projection ``v [embed, kv_heads, head_dim]`` and output projection
  ``o [heads, head_dim, embed]`` (as ``MultiHeadAttention``; no q/k)."""

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, use_bias: bool = False, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    check_positive_int(d_model, "d_model")
    check_positive_int(num_heads, "num_heads")
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    check_positive_int(num_kv_heads, "num_kv_heads")
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                       f"({num_kv_heads})")
    head_dim = d_model // num_heads if head_dim is None else head_dim
    check_positive_int(head_dim, "head_dim")
    self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = (
        d_model, num_heads, num_kv_heads, head_dim)
    self.dtype = resolve_dtype(dtype)
    pdt = resolve_dtype(param_dtype, "param_dtype")
    e, h, kh, d = d_model, num_heads, num_kv_heads, head_dim
    zeros = nnx.initializers.zeros_init()
    self.v = nnx.Einsum("BTE,EKD->BTKD", (e, kh, d), (kh, d) if use_bias else None,
                        dtype=self.dtype, param_dtype=pdt,
                        kernel_init=logical_init(_fan_in(0, (1, 2)),
                                                 ("embed", "kv_heads", "head_dim")),
                        bias_init=logical_init(zeros, ("kv_heads", "head_dim")), rngs=rngs)
    self.o = nnx.Einsum("BTHD,HDE->BTE", (h, d, e), (e,) if use_bias else None,
                        dtype=self.dtype, param_dtype=pdt,
                        kernel_init=logical_init(_fan_in((0, 1), 2),
                                                 ("heads", "head_dim", "embed")),
                        bias_init=logical_init(zeros, ("embed",)), rngs=rngs)
    self.cached_value = nnx.data(None)
    self.cache_index = nnx.data(None)


  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    """Allocate ``cached_value [batch, max_len, kv_heads, head_dim]``; index 0."""
    check_positive_int(batch, "batch")
    check_positive_int(max_len, "max_len")
    dtype = self.dtype if dtype is None else resolve_dtype(dtype)
    self.cached_value = nnx.Cache(jnp.zeros((batch, max_len, self.num_kv_heads,
                                             self.head_dim), dtype))
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def __call__(self, x: Array, *, positions: Array | None = None, mask: Any = None,
               head_mask: Array | None = None, bias: Array | None = None,
               decode: bool = False, return_weights: bool = False, deterministic: bool = True,
               shared_weights: Array | None = None) -> Any:
    """``x [B, T, E]`` and the anchor's ``shared_weights [B, H, T, S]`` -> ``[B, T, E]``.

    ``positions``, ``mask`` and ``bias`` are unused: the anchor's weights already carry the
    positions, masks and biases of the anchor layer. ``return_weights`` returns the shared
    weights.
    """
    del positions, mask, bias, deterministic
    if shared_weights is None:
      raise ValueError("EchoAttention needs the anchor layer's attention weights "
                       "(shared_weights); build it through config.model.echo")
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must have shape [batch, length, d_model={self.d_model}], got "
                       f"{x.shape}")
    v = self.v(x)
    if decode:
      if self.cached_value is None:
        raise ValueError("decode=True needs a cache: call init_cache(batch, max_len) first")
      cv = self.cached_value[...]
      index = self.cache_index[...]
      cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
      self.cached_value[...] = cv
      self.cache_index[...] = index + x.shape[1]
      v = cv.astype(v.dtype)
    expected = (x.shape[0], self.num_heads, x.shape[1], v.shape[1])
    if tuple(shared_weights.shape) != expected:
      raise ValueError(f"shared_weights must have shape [batch, heads, q_len, kv_len] = "
                       f"{expected}, got {shared_weights.shape}")
    out = echo_core.echo_attention(shared_weights, v, head_mask=head_mask)
    y = self.o(out.astype(self.dtype))
    return (y, shared_weights) if return_weights else y
