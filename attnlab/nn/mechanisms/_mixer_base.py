"""Shared plumbing of the token-mixer modules: option parsing/validation, parameters, and a
``TokenMixer`` base class implementing the attention-module interface of
``attnlab.nn.attention`` for modules that replace attention.

``TokenMixer`` subclasses implement ``mix(x, *, positions, mask, head_mask, bias,
return_weights)`` over a whole sequence. The base class builds the structural mask (causal,
sliding window, the caller's extra mask) and implements decoding with an *input* cache: the
normalised inputs of all past positions are kept (``cached_input [B, S, E]``) and the mixer is
re-run over the cache, reading the rows of the new tokens. Because every mixer here is causal
under a causal mask, rows never read later (unwritten) positions. This costs one full mix per
step (fine for the small decoding tests it serves; mixers are ablations, not fast paths).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core import masks
from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import _MANAGED
from attnlab.nn.common import cfg_get, check_positive_int, freeze, resolve_dtype, to_dict
from attnlab.nn.partitioning import logical_init

Array = jax.Array


class FrozenRandom(nnx.Variable):
  """A fixed random tensor: model state, never an ``nnx.Param`` (the optimizer skips it)."""


def make_param(rngs: nnx.Rngs, init: Callable[..., Any], shape: tuple[int, ...],
               names: tuple[str | None, ...], dtype: Any = jnp.float32) -> nnx.Param:
  """An ``nnx.Param`` of ``shape`` carrying logical axis ``names``."""
  return nnx.Param(logical_init(init, names)(rngs.params(), shape, dtype))


def normal_init(std: float) -> Callable[..., Any]:
  return nnx.initializers.normal(std)


zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()
lecun = nnx.initializers.lecun_normal()


def check_option(options: dict[str, Any], name: str, kind: Any, default: Any,
                 owner: str) -> Any:
  """Read and type-check one option: kind "int>0", "int>=0", "bool", "float", "float>0",
  "float>=0", or a tuple of allowed values."""
  val = options.get(name, default)
  is_int = isinstance(val, int) and not isinstance(val, bool)
  is_num = isinstance(val, (int, float)) and not isinstance(val, bool)
  if isinstance(kind, tuple):
    ok, what = val in kind, f"one of {list(kind)}"
  else:
    ok = {
        "int>0": is_int and val > 0, "int>=0": is_int and val >= 0,
        "bool": isinstance(val, bool), "float": is_num,
        "float>0": is_num and val > 0, "float>=0": is_num and val >= 0,
    }[kind]
    what = kind
  if not ok:
    raise ValueError(f"{owner}: option {name!r} must be {what}, got {val!r}")
  return val


def parse_options(options: Any, spec: dict[str, tuple[Any, Any]], owner: str,
                  where: str) -> dict[str, Any]:
  """Validate ``options`` against ``spec`` (name -> (kind, default)); unknown names raise.

  Returns every option of ``spec`` with defaults filled in.
  """
  options = to_dict(options)
  for key in options:
    if key in _MANAGED:
      raise ValueError(f"{where} may not set {key!r}: {_MANAGED[key]}")
  unknown = sorted(set(options) - set(spec))
  if unknown:
    raise ValueError(f"unknown {where} {unknown} for {owner!r}; accepted: {sorted(spec)}")
  return {name: check_option(options, name, kind, default, owner)
          for name, (kind, default) in spec.items()}


def attention_options(cfg: Any) -> Any:
  return cfg_get(cfg_get(cfg, "attention", {}), "kwargs", {})


class TokenMixer(nnx.Module):
  """Base class of modules replacing attention (see the module docstring).

  Subclasses set ``kwarg_spec`` (name -> (kind, default) of ``config.model.attention.kwargs``)
  and implement ``build(cfg, rngs)`` and ``mix``. ``self.options`` holds the parsed kwargs.
  """

  kwarg_spec: ClassVar[dict[str, tuple[Any, Any]]] = {}
  #: False: ``mix`` ignores masks (no token mixing), decoding needs no cache.
  mixes_tokens: ClassVar[bool] = True

  def __init__(self, cfg: Any, *, layer_index: int = 0, causal: bool = True,
               rngs: nnx.Rngs):
    self.check_config(cfg)
    att = cfg_get(cfg, "attention", {})
    self.mechanism = cfg_get(att, "mechanism", type(self).__name__)
    self.options = freeze(parse_options(attention_options(cfg), self.kwarg_spec,
                                        self.mechanism, "attention kwargs"))
    self.d_model = cfg.d_model
    self.num_heads = cfg.num_heads
    self.num_kv_heads = cfg_get(cfg, "num_kv_heads", cfg.num_heads)
    self.head_dim = cfg_get(cfg, "head_dim", cfg.d_model // cfg.num_heads)
    self.max_len = cfg.max_len
    self.num_layers = cfg.num_layers
    self.layer_index = layer_index
    self.causal = bool(causal)
    self.sliding_window = cfg_get(att, "sliding_window")
    self.dtype = resolve_dtype(cfg_get(cfg, "dtype", "float32"))
    self.cached_input = nnx.data(None)
    self.cache_index = nnx.data(None)
    self.build(cfg, rngs)

  def opt(self, name: str) -> Any:
    return dict(self.options)[name]

  # -- interface ------------------------------------------------------------------------------

  @classmethod
  def check_config(cls, cfg: Any) -> None:
    att = cfg_get(cfg, "attention", {})
    mechanism = cfg_get(att, "mechanism", cls.__name__)
    parse_options(attention_options(cfg), cls.kwarg_spec, mechanism, "attention kwargs")
    if cfg_get(att, "softcap") is not None:
      raise ValueError(f"{mechanism}: attention.softcap is not supported by this token mixer")
    check_positive_int(cfg_get(att, "sliding_window"), "attention.sliding_window",
                       allow_none=True)

  @classmethod
  def from_config(cls, cfg: Any, *, layer_index: int, causal: bool,
                  rngs: nnx.Rngs) -> "TokenMixer":
    return cls(cfg, layer_index=layer_index, causal=causal, rngs=rngs)

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    raise NotImplementedError

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

  def __call__(self, x: Array, *, positions: Array | None = None,
               mask: masks.Mask | None = None, head_mask: Array | None = None,
               bias: Array | None = None, decode: bool = False, return_weights: bool = False,
               deterministic: bool = True) -> Any:
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
