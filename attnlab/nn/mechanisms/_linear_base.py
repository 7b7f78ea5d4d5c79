"""Shared NNX plumbing of the linear / recurrent attention modules (``attnlab.core.linear``).

``LinearAttention`` projects ``x [B, T, E]`` to q ``[B, T, H, D]`` and k, v (``num_kv_heads``
heads, repeated to ``H``: each query head keeps its own recurrent state), calls the subclass's
``core`` (the mechanism's pure function) and projects back. Decoding keeps the recurrent state
as the cache (``init_cache``): its size does not depend on ``max_len`` or on how many tokens
were decoded, O(1) in sequence length. ``core(x, q, k, v, state=...)`` receives the state
dict (``state_shapes``) when decoding and returns ``(out, new_state)``; subclasses choose the
state (the linear-attention state, a convolution tail, Aaren's scan triple, ...).
Only the structural masks of linear attention exist here: causal or bidirectional
(``causal``); an extra mask, a bias or attention weights raise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

from attnlab.core import masks
from attnlab.core.linear import FORMS
from attnlab.nn.common import check_positive_int, resolve_dtype, resolve_heads
from attnlab.nn.mechanisms._mixer_base import check_value, make_param

Array = jax.Array

_IN_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                             out_axis=(1, 2))
_OUT_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                              in_axis=(0, 1), out_axis=2)


def rms_norm_heads(x: Array, scale: Array, eps: float = 1e-6) -> Array:
  """RMSNorm over the last axis of ``x [B, T, H, D]`` with ``scale [H, D]`` (float32)."""
  x = jnp.asarray(x, jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale.astype(jnp.float32)


class LinearAttention(nnx.Module):
  """Base of the linear-attention modules (see the module docstring).

  Args:
    d_model, num_heads, num_kv_heads, head_dim: as ``MultiHeadAttention``.
    causal: decoder (True) or bidirectional encoder.
    use_bias: biases on the projections.
    form: "chunked" (default), "parallel" or "recurrent" for full passes (decoding always
      runs the recurrent form from the cached state).
    chunk_size: chunk length of the chunked form.
    dtype, param_dtype: compute / parameter dtypes.
  """

  mechanism_name: ClassVar[str | None] = None
  #: False: no query projection (Aaren's queries are learned); ``project`` returns q = None.
  query_projection: ClassVar[bool] = True
  #: True: keys are the queries (SOFT's shared projection); needs num_kv_heads == num_heads.
  shared_qk: ClassVar[bool] = False

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, causal: bool = True, use_bias: bool = False,
               form: str = "chunked", chunk_size: int = 64, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.mechanism = type(self).mechanism_name or type(self).__name__
    num_kv_heads, head_dim = resolve_heads(d_model, num_heads, num_kv_heads, head_dim)
    if not isinstance(causal, bool):
      raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    self.form = check_value(form, "form", FORMS, self.mechanism)
    self.chunk_size = check_value(chunk_size, "chunk_size", "int>0", self.mechanism)
    self.d_model, self.num_heads = d_model, num_heads
    self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
    self.causal = causal
    self.dtype = resolve_dtype(dtype)
    self.param_dtype = resolve_dtype(param_dtype, "param_dtype")
    e, h, kh, d = d_model, num_heads, num_kv_heads, head_dim
    pd = self.param_dtype
    if self.shared_qk and kh != h:
      raise ValueError(f"{self.mechanism}: keys are the queries, so num_kv_heads must equal "
                       f"num_heads={h}, got {kh}")
    self.wq = (make_param(rngs, _IN_INIT, (e, h, d), ("embed", "heads", "head_dim"), pd)
               if self.query_projection else nnx.data(None))
    self.wk = (nnx.data(None) if self.shared_qk else
               make_param(rngs, _IN_INIT, (e, kh, d), ("embed", "kv_heads", "head_dim"), pd))
    self.wv = make_param(rngs, _IN_INIT, (e, kh, d), ("embed", "kv_heads", "head_dim"), pd)
    self.wo = make_param(rngs, _OUT_INIT, (h, d, e), ("heads", "head_dim", "embed"), pd)
    zeros = nnx.initializers.zeros_init()
    if use_bias:
      self.bq = (make_param(rngs, zeros, (h, d), ("heads", "head_dim"), pd)
                 if self.query_projection else nnx.data(None))
      self.bk = (nnx.data(None) if self.shared_qk else
                 make_param(rngs, zeros, (kh, d), ("kv_heads", "head_dim"), pd))
      self.bv = make_param(rngs, zeros, (kh, d), ("kv_heads", "head_dim"), pd)
      self.bo = make_param(rngs, zeros, (e,), ("embed",), pd)
    self.use_bias = bool(use_bias)
    self.cache_state = nnx.data(None)

  # -- hooks ---------------------------------------------------------------------------------

  def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of each decode-state array (float32), independent of sequence length."""
    raise NotImplementedError

  def core(self, x: Array, q: Array, k: Array, v: Array, *,
           state: dict[str, Array] | None) -> tuple[Array, dict[str, Array] | None]:
    """``out [B, T, H, Dv]`` (and the new state when ``state`` is given)."""
    raise NotImplementedError

  # -- pieces --------------------------------------------------------------------------------

  def kernel(self, p: nnx.Param) -> Array:
    return p[...].astype(self.dtype)

  def project(self, x: Array) -> tuple[Array, Array, Array]:
    """q ``[B, T, H, D]`` (None without a query projection); k, v ``[B, T, H, D]`` (kv heads
    repeated to H; k is q with ``shared_qk``)."""
    proj = lambda w, b: (jnp.einsum("bte,ehd->bthd", x, self.kernel(w))  # noqa: E731
                         + (self.kernel(b) if self.use_bias else 0.0))
    q = proj(self.wq, self.bq if self.use_bias else None) if self.query_projection else None
    k = q if self.shared_qk else proj(self.wk, self.bk if self.use_bias else None)
    v = proj(self.wv, self.bv if self.use_bias else None)
    rep = self.num_heads // self.num_kv_heads
    if rep > 1:
      k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    return q, k, v

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    """Zero recurrent state (``state_shapes(batch)``); ``max_len``/``dtype`` are accepted for
    the model's interface and unused: the state has the same size for any length."""
    del max_len, dtype
    check_positive_int(batch, "batch")
    self.cache_state = nnx.Cache({n: jnp.zeros(s, jnp.float32)
                                  for n, s in self.state_shapes(batch).items()})

  def state_bytes(self, batch: int = 1) -> int:
    """Bytes of the decode state for ``batch`` sequences (any length)."""
    return sum(4 * int(jnp.prod(jnp.asarray(s))) for s in self.state_shapes(batch).values())

  def __call__(self, x: Float[Array, "B T E"], *, positions: Int[Array, "*B T"] | None = None,
               mask: masks.Mask | None = None, head_mask: Float[Array, "*B H"] | None = None,
               bias: Array | None = None, decode: bool = False, return_weights: bool = False,
               deterministic: bool = True) -> Float[Array, "B T E"]:
    """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``decode`` continues from the cached
    state."""
    del positions, deterministic
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must have shape [batch, length, d_model={self.d_model}], got "
                       f"{x.shape}")
    if mask is not None:
      raise ValueError(f"{self.mechanism}: linear attention takes no extra mask (only causal "
                       f"or bidirectional, set by the model), got {type(mask).__name__}")
    if bias is not None:
      raise ValueError(f"{self.mechanism} has no attention logits: bias is not supported")
    if return_weights:
      raise ValueError(f"{self.mechanism} does not form attention weights "
                       "(record_weights_layers)")
    x = x.astype(self.dtype)
    q, k, v = self.project(x)
    if decode:
      if self.cache_state is None:
        raise ValueError("decode=True needs a cache: call init_cache(batch, max_len) first")
      if not self.causal:
        raise ValueError(f"{self.mechanism}: decoding needs causal=True")
      state = self.cache_state.get_value()
      want = next(iter(state.values())).shape[0]
      if x.shape[0] != want:
        raise ValueError(f"decode batch size {x.shape[0]} does not match the cache batch size "
                         f"{want} (init_cache(batch=...))")
      out, new = self.core(x, q, k, v, state=state)
      self.cache_state.set_value(new)
    else:
      out, _ = self.core(x, q, k, v, state=None)
    if head_mask is not None:
      hm = jnp.asarray(head_mask, jnp.float32)
      if hm.shape not in ((self.num_heads,), (x.shape[0], self.num_heads)):
        raise ValueError(f"head_mask must have shape [H]=({self.num_heads},) or [B, H]="
                         f"({x.shape[0]}, {self.num_heads}), got {hm.shape}")
      hm = hm[None, None, :, None] if hm.ndim == 1 else hm[:, None, :, None]
      out = out * hm
    y = jnp.einsum("bthd,hde->bte", out.astype(self.dtype), self.kernel(self.wo))
    return y + self.kernel(self.bo) if self.use_bias else y
