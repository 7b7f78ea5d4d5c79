"""Shared plumbing of the token-mixer modules: hyperparameter checks, parameters, and a
``TokenMixer`` base class implementing the attention-module interface of
``attnlab.nn.attention`` for modules that replace attention.

``TokenMixer`` subclasses (one file each in ``attnlab/nn/mechanisms/``) implement ``mix(x, *,
positions, mask, head_mask, bias, return_weights)`` over a whole sequence. The base class builds
the structural mask (causal, sliding window, the caller's extra mask) and implements decoding
with an *input* cache: the normalised inputs of all past positions are kept (``cached_input [B,
S, E]``) and the mixer is re-run over the cache, reading the rows of the new tokens. Because
every mixer here is causal under a causal mask, rows never read later (unwritten) positions.
This costs one full mix per step (fine for the small decoding tests it serves; mixers are
ablations, not fast paths).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

from attnlab.core import masks
from attnlab.nn import positions as positions_lib
from attnlab.nn.common import FrozenRandom  # noqa: F401  (re-exported for the mixers)
from attnlab.nn.common import check_positive_int, resolve_dtype, resolve_heads
from attnlab.nn.partitioning import logical_init

Array = jax.Array


def make_param(rngs: nnx.Rngs, init: Callable[..., Any], shape: tuple[int, ...],
               names: tuple[str | None, ...], dtype: Any = jnp.float32) -> nnx.Param:
  """An ``nnx.Param`` of ``shape`` carrying logical axis ``names``."""
  return nnx.Param(logical_init(init, names)(rngs.params(), shape, dtype))


def normal_init(std: float) -> Callable[..., Any]:
  return nnx.initializers.normal(std)


zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()
lecun = nnx.initializers.lecun_normal()


def check_value(value: Any, name: str, kind: Any, owner: str) -> Any:
  """Type-check one hyperparameter; returns it. ``kind``: "int>0", "int>=0", "bool", "float",
  "float>0", "float>=0", or a tuple of allowed values."""
  is_int = isinstance(value, int) and not isinstance(value, bool)
  is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(kind, tuple):
    ok, what = value in kind, f"one of {list(kind)}"
  else:
    ok = {
        "int>0": is_int and value > 0, "int>=0": is_int and value >= 0,
        "bool": isinstance(value, bool), "float": is_num,
        "float>0": is_num and value > 0, "float>=0": is_num and value >= 0,
    }[kind]
    what = kind
  if not ok:
    raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
  return value


class TokenMixer(nnx.Module):
  """Base class of modules replacing attention (see the module docstring).

  Subclasses are registered with ``@register_attention_module(name)``, take their
  hyperparameters as typed keyword arguments (forwarding the shared ones below to this
  constructor), create their parameters in ``__init__`` and implement ``mix``.

  Args:
    d_model, num_heads: width and heads (``num_kv_heads`` / ``head_dim`` as in
      ``MultiHeadAttention``).
    max_len: longest sequence (mixers with per-position parameters size them by it).
    num_layers, layer_index: depth of the stack and this layer's 0-based index.
    causal: mix only from earlier positions (decoder).
    sliding_window: attend to the last W positions (None = off).
    softcap: must be None (token mixers have no logits to cap).
    dtype: compute dtype.
  """

  mechanism_name: ClassVar[str | None] = None
  #: False: ``mix`` ignores masks (no token mixing), decoding needs no cache.
  mixes_tokens: ClassVar[bool] = True

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, max_len: int = 512, num_layers: int = 1,
               layer_index: int = 0, causal: bool = True, sliding_window: int | None = None,
               softcap: float | None = None, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    del rngs  # subclasses create the parameters
    self.mechanism = type(self).mechanism_name or type(self).__name__
    num_kv_heads, head_dim = resolve_heads(d_model, num_heads, num_kv_heads, head_dim)
    check_positive_int(max_len, "max_len")
    check_positive_int(num_layers, "num_layers")
    check_positive_int(sliding_window, "sliding_window", allow_none=True)
    if softcap is not None:
      raise ValueError(f"{self.mechanism}: softcap is not supported by this token mixer, got "
                       f"{softcap!r}")
    self.d_model, self.num_heads = d_model, num_heads
    self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
    self.max_len, self.num_layers, self.layer_index = max_len, num_layers, layer_index
    self.causal = bool(causal)
    self.sliding_window = sliding_window
    self.dtype = resolve_dtype(dtype)
    self.cached_input = nnx.data(None)
    self.cache_index = nnx.data(None)

  def mix(self, x: Array, *, positions: Array, mask: masks.Mask | None,
          head_mask: Array | None, bias: Array | None, return_weights: bool) -> Any:
    raise NotImplementedError

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    """Input cache ``cached_input [batch, max_len, d_model]``; ``cache_index`` 0."""
    check_positive_int(batch, "batch")
    check_positive_int(max_len, "max_len")
    dtype = self.dtype if dtype is None else resolve_dtype(dtype)
    self.cached_input = nnx.Cache(jnp.zeros((batch, max_len, self.d_model), dtype))
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def structural_mask(self, q_offset: Any = 0,
                      kv_length: Any = None) -> masks.Mask | None:
    out = []
    if self.causal:
      out.append(masks.CausalMask(q_offset))
    if self.sliding_window is not None:
      w = self.sliding_window - 1
      out.append(masks.SlidingWindowMask(w, 0 if self.causal else w, q_offset))
    if kv_length is not None:
      out.append(masks.ValidLengthMask(kv_lengths=kv_length))
    return masks.combine(*out)

  def __call__(self, x: Float[Array, "B T E"], *, positions: Int[Array, "*B T"] | None = None,
               mask: masks.Mask | None = None, head_mask: Float[Array, "*B H"] | None = None,
               bias: Float[Array, "#B #H #T #S"] | None = None, decode: bool = False,
               return_weights: bool = False, deterministic: bool = True
               ) -> Float[Array, "B T E"] | tuple[Float[Array, "B T E"], Float[Array, "B H T S"]]:
    """``x [B, T, d_model]`` -> ``[B, T, d_model]`` (or ``(out, weights [B, H, T, S])`` for
    mixers that have attention weights; others raise on ``return_weights``)."""
    del deterministic
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must have shape [batch, length, d_model={self.d_model}], got "
                       f"{x.shape}")
    b, t, _ = x.shape
    if not decode:
      pos = (positions_lib.default_positions(b, t) if positions is None
             else positions_lib.check_positions(positions, b, t))
      return self.mix(x, positions=pos, mask=masks.combine(self.structural_mask(), mask),
                      head_mask=head_mask, bias=bias, return_weights=return_weights)
    if not self.mixes_tokens:
      pos = positions_lib.default_positions(b, t)
      return self.mix(x, positions=pos, mask=None, head_mask=head_mask, bias=bias,
                      return_weights=return_weights)
    if self.cached_input is None:
      raise ValueError("decode=True needs a cache: call init_cache(batch, max_len) first")
    if mask is not None or bias is not None:
      raise ValueError(f"{self.mechanism}: an extra mask or bias is not supported with "
                       "decode=True")
    if not self.causal:
      raise ValueError(f"{self.mechanism}: decoding needs a causal model")
    cache = self.cached_input[...]
    if b != cache.shape[0] or t > cache.shape[1]:
      raise ValueError(f"decode input {x.shape} does not fit the cache {cache.shape}")
    index = self.cache_index[...]
    cache = jax.lax.dynamic_update_slice(cache, x.astype(cache.dtype), (0, index, 0))
    self.cached_input[...] = cache
    self.cache_index[...] = index + t
    s = cache.shape[1]
    out = self.mix(cache.astype(x.dtype), positions=positions_lib.default_positions(b, s),
                   mask=self.structural_mask(kv_length=index + t), head_mask=head_mask,
                   bias=None, return_weights=return_weights)
    if return_weights:
      out, weights = out
      weights = jax.lax.dynamic_slice_in_dim(weights, index, t, axis=2)
      return jax.lax.dynamic_slice_in_dim(out, index, t, axis=1), weights
    return jax.lax.dynamic_slice_in_dim(out, index, t, axis=1)


def no_weights(mechanism: str, head_mask: Any, bias: Any, return_weights: bool) -> None:
  """Raise for analysis inputs a mixer without attention heads cannot honour."""
  if return_weights:
    raise ValueError(f"{mechanism} has no attention weights to return "
                     "(record_weights_layers)")
  if head_mask is not None:
    raise ValueError(f"{mechanism} has no attention heads: head_mask is not supported")
  if bias is not None:
    raise ValueError(f"{mechanism} has no attention logits: an attention bias is not "
                     "supported")
