"""RCMHA module (arXiv 2308.03429): depth-wise convolution of the Q/K/V projections plus
Transformer-XL relative scores, ending in ``attnlab.core.mechanisms.rcmha_attention``.

``q = DWConv_q(x W_q)``, ``k = DWConv_k(x W_k)``, ``v = DWConv_v(x W_v)``: one length-``c``
filter per channel (``kernel_size``), **causal** (output t reads inputs ``t-c+1 .. t``,
zero-padded on the left) so a decoder never sees the future; the encoder uses the same causal
filter. Filters start as the identity (last tap 1). Relative scores
``(q_i + u).k_j + (q_i + w).r[clip(i-j, -m, m)]`` with ``r = W_r R``, ``R`` the fixed
sinusoidal table of distances ``-m..m`` ``[2m+1, E']`` (``E'`` = E rounded up to even),
``W_r`` ``[E', H, D]``, ``u``, ``w`` ``[H, D]`` zero-init. Departures: the paper does not pin
the convolution's padding or init; we clip distances at ``m = max_distance``. Decoding keeps
the last ``c - 1`` projections per layer in a convolution cache (``init_cache``). Use
``model.position = "none"`` for the paper's setting. Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, check_kwarg, make_param

Array = jax.Array


def causal_depthwise_conv(x: Array, kernel: Array, state: Array | None = None) -> Array:
  """``out[t] = sum_s kernel[s] * x[t - c + 1 + s]`` over ``x [B, T, H, D]``,
  ``kernel [c, H, D]``; ``state [B, c-1, H, D]`` holds the inputs before ``x`` (zeros if
  None)."""
  c = kernel.shape[0]
  if c == 1:
    return x * kernel[0].astype(x.dtype)
  b, t, h, d = x.shape
  if state is None:
    state = jnp.zeros((b, c - 1, h, d), x.dtype)
  xp = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, T + c - 1, H, D]
  out = jnp.zeros(x.shape, jnp.float32)
  for s in range(c):
    out = out + xp[:, s:s + t].astype(jnp.float32) * kernel[s].astype(jnp.float32)
  return out.astype(x.dtype)


@register_attention_module("rcmha")
class RCMHAttention(ScoresAttention):
  """RCMHA over ``x [B, T, E]``; see the module docstring.

  Args: ``max_distance`` (relative positions clipped to it), ``kernel_size`` (of the causal
  depth-wise convolution on q/k/v); ``**kwargs``: ``MultiHeadAttention``'s arguments.
  """

  def __init__(self, d_model: int, num_heads: int, *, max_distance: int = 64,
               kernel_size: int = 3, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.max_distance = check_kwarg(max_distance, "max_distance", "int>0", "rcmha")
    self.kernel_size = c = check_kwarg(kernel_size, "kernel_size", "int>0", "rcmha")
    e, h, kh, d, pd = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim,
                       self.param_dtype)

    def ident(key, shape, dtype=jnp.float32):
      del key
      return jnp.zeros(shape, dtype).at[-1].set(1.0)

    self.conv_q = make_param(rngs, ident, (c, h, d), (None, "heads", "head_dim"), pd)
    self.conv_k = make_param(rngs, ident, (c, kh, d), (None, "kv_heads", "head_dim"), pd)
    self.conv_v = make_param(rngs, ident, (c, kh, d), (None, "kv_heads", "head_dim"), pd)
    self.rel_dim = e + e % 2
    proj = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                             out_axis=(1, 2))
    self.r_proj = make_param(rngs, proj, (self.rel_dim, h, d), (None, "heads", "head_dim"), pd)
    zeros = nnx.initializers.zeros_init()
    self.u = make_param(rngs, zeros, (h, d), ("heads", "head_dim"), pd)
    self.w = make_param(rngs, zeros, (h, d), ("heads", "head_dim"), pd)
    self.conv_state_q = nnx.data(None)
    self.conv_state_k = nnx.data(None)
    self.conv_state_v = nnx.data(None)
    self.decoding = False

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    """KV cache (see ``MultiHeadAttention.init_cache``) plus the convolution state: the last
    ``kernel_size - 1`` q/k/v projections, zeros at the start."""
    super().init_cache(batch, max_len, dtype)
    c, h, kh, d = self.kernel_size, self.num_heads, self.num_kv_heads, self.head_dim
    dt = self.cached_key[...].dtype
    self.conv_state_q = nnx.Cache(jnp.zeros((batch, c - 1, h, d), dt))
    self.conv_state_k = nnx.Cache(jnp.zeros((batch, c - 1, kh, d), dt))
    self.conv_state_v = nnx.Cache(jnp.zeros((batch, c - 1, kh, d), dt))

  def project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    """Projections, then the causal depth-wise convolution (reading and advancing the
    convolution state when decoding)."""
    out = []
    for raw, kernel, name in zip(super().project_qkv(x), (self.conv_q, self.conv_k,
                                                          self.conv_v), "qkv"):
      state = None
      if self.decoding and self.kernel_size > 1:
        var = getattr(self, f"conv_state_{name}")
        state = var[...]
        var[...] = jnp.concatenate([state, raw.astype(state.dtype)], axis=1)[
            :, -(self.kernel_size - 1):]
      out.append(causal_depthwise_conv(raw, kernel[...], state))
    return tuple(out)

  def __call__(self, x: Array, *, decode: bool = False, **kwargs: Any) -> Any:
    if decode and self.conv_state_q is None:
      raise ValueError("decode=True needs a KV cache: call init_cache(batch, max_len) first")
    self.decoding = bool(decode)
    try:
      return super().__call__(x, decode=decode, **kwargs)
    finally:
      self.decoding = False

  def relative_table(self) -> Array:
    """``r = W_r R`` ``[2m + 1, H, D]`` for distances ``-m .. m``."""
    m = self.max_distance
    dist = jnp.arange(-m, m + 1, dtype=jnp.int32)
    table = positions_lib.sinusoidal_embedding(dist, self.rel_dim)[0].astype(self.dtype)
    return jnp.einsum("re,ehd->rhd", table, self.r_proj[...].astype(self.dtype))

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights,
                          r=self.relative_table(), u=self.u[...].astype(self.dtype),
                          w=self.w[...].astype(self.dtype), max_distance=self.max_distance)
