"""Multi-head attention as an NNX module, a registry of attention modules, and a KV cache.

``MultiHeadAttention`` projects ``x [B, T, E]`` to q ``[B, T, H, D]`` and k/v ``[B, T, K, D]``
(``K = num_kv_heads``: MHA when K == H, GQA when 1 < K < H, MQA when K == 1), applies RoPE or
ALiBi when asked, and calls ``attnlab.attention`` with the configured mechanism,
implementation and mechanism hyperparameters. Analysis inputs (``head_mask``, additive
``bias``) are call arguments, so they are traced: one compilation serves every ablation.

New mechanisms that need parameters of their own (relative position tables, convolutions on
q/k/v, gates, ...) get one file in ``attnlab/nn/mechanisms/``: a class that subclasses
``MultiHeadAttention`` (usually overriding ``attend`` or ``project_qkv``) or
``attnlab.nn.mechanisms._mixer_base.TokenMixer``, decorated with
``@register_attention_module("name")``. Its constructor takes explicit, typed keyword
arguments: ``(d_model, num_heads, *, <shared arguments it uses>, <its hyperparameters>, rngs)``;
modules never read a config. The model builder (``attnlab.models``) passes each shared
argument the class accepts (``SHARED_ARGUMENTS``; see ``accepted_arguments``) plus
``config.model.attention.kwargs``. A registered class must provide what the blocks use:

* ``__call__(x, *, positions, mask, head_mask, bias, decode, return_weights, deterministic)``
  returning ``[B, T, E]`` or ``(out, weights [B, H, T, S])`` when ``return_weights``;
* ``init_cache(batch, max_len, dtype)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

import attnlab
from attnlab.core import api as core_api
from attnlab.core import masks
from attnlab.core import registry as core_registry
from attnlab.nn import positions as positions_lib
from attnlab.nn.common import (check_positive_int, freeze, resolve_dtype, resolve_heads,
                               to_dict)
from attnlab.nn.partitioning import logical_init

Array = jax.Array

# Arguments of the shared implementation signature (not mechanism hyperparameters).
_CONTRACT = frozenset({"q", "k", "v", "mask", "bias", "scale", "softcap", "alibi_slopes",
                       "q_offset", "head_mask", "return_weights"})
# Attention arguments the module sets itself; where to set them instead.
_MANAGED = {
    "mask": "masks come from the model (causal, segment_ids, lengths, sliding_window)",
    "is_causal": "causality is set by the model type",
    "bias": "pass attn_biases to the model call",
    "softcap": "set config.model.attention.softcap",
    "alibi_slopes": "set config.model.position = 'alibi'",
    "q_offset": "set by the KV cache when decoding",
    "head_mask": "pass head_masks to the model call",
    "return_weights": "pass record_weights_layers to the model call",
    "mechanism": "set config.model.attention.mechanism",
    "implementation": "set config.model.attention.implementation",
    "normalizer": "it switches the mechanism inside the chunked implementation; set "
                  "config.model.attention.mechanism",
}


def _load_core_plugins() -> None:
  loader = getattr(core_api, "_load_plugins", None)
  if loader is not None:
    loader()


def _fn_kwargs(fn: Any) -> frozenset[str] | None:
  """Keyword names a function accepts beyond the shared contract; None if it takes **kwargs."""
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return None
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return None
  return frozenset(p.name for p in params
                   if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)) - _CONTRACT


def accepted_mechanism_kwargs(mechanism: str,
                              implementation: str = "auto") -> frozenset[str] | None:
  """Hyperparameter names ``attnlab.attention`` accepts for this mechanism/implementation.

  With ``"auto"`` a name must be accepted by every implementation "auto" may pick on any
  platform without a platform restriction (read from their signatures; an implementation
  taking ``**kwargs`` is not constraining). Platform-restricted ones (the Pallas kernels) do
  not constrain: "auto" skips them when they refuse a keyword. This needs no JAX backend, so a
  config can be checked before ``jax.distributed.initialize()``. ``scale`` is always accepted.
  None: unknown (anything goes).
  """
  mech = core_registry.get_mechanism(mechanism)  # ValueError listing the valid names
  if implementation in ("auto", "pallas"):
    _load_core_plugins()
  if not mech.implementations:
    raise ValueError(f"mechanism {mechanism!r} (kind {getattr(mech, 'kind', '?')!r}) has no "
                     "implementation in attnlab.core, so attnlab.attention cannot run it")
  if implementation == "auto":
    impls = ([i for i in mech.implementations.values() if not i.auto_platforms]
             or list(mech.implementations.values()))
  else:
    if implementation not in mech.implementations:
      raise ValueError(f"unknown implementation {implementation!r} for mechanism {mechanism!r}; "
                       f"available: {sorted(mech.implementations)} or 'auto'")
    impls = [mech.implementations[implementation]]
  known = [s for s in (_fn_kwargs(i.fn) for i in impls) if s is not None]
  if not known:
    return None
  out = known[0]
  for s in known[1:]:
    out = out & s
  return out | {"scale"}


def check_mechanism_kwargs(mechanism: str, implementation: str, kwargs: Mapping[str, Any] | None,
                           *, core_mechanism: str | None = None) -> dict[str, Any]:
  """Validate the hyperparameters a ``MultiHeadAttention`` forwards to ``attnlab.attention(
  mechanism=core_mechanism or mechanism, ...)``; return them as a plain dict."""
  kwargs = to_dict(kwargs)
  for key in kwargs:
    if not isinstance(key, str):
      raise TypeError(f"attention kwargs keys must be strings, got {key!r}")
    if key in _MANAGED:
      raise ValueError(f"attention kwargs may not set {key!r}: {_MANAGED[key]}")
  accepted = accepted_mechanism_kwargs(core_mechanism or mechanism, implementation)
  if accepted is None:
    return kwargs
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ValueError(f"unknown attention kwargs {unknown} for mechanism {mechanism!r} with "
                     f"implementation {implementation!r}; accepted: {sorted(accepted)}")
  return kwargs


# ----------------------------------------------------------------------------------------------
# The module.


def _fan_in_init(in_axis: Any, out_axis: Any):
  return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis,
                                           out_axis=out_axis)


class MultiHeadAttention(nnx.Module):
  """Multi-head (GQA/MQA) attention over ``x [B, T, E]`` -> ``[B, T, E]``.

  Parameters (logical axes): ``q`` ``[embed, heads, head_dim]``, ``k``/``v``
  ``[embed, kv_heads, head_dim]``, ``o`` ``[heads, head_dim, embed]`` (+ biases when
  ``use_bias``). Subclasses may set ``core_mechanism`` (the ``attnlab.attention`` mechanism
  they call when their registered name is not a core mechanism).
  """

  core_mechanism: ClassVar[str | None] = None
  #: Set by ``@register_attention_module(name)`` on subclasses: the mechanism is fixed by the
  #: class (``mechanism=`` is for plain ``MultiHeadAttention`` only).
  mechanism_name: ClassVar[str | None] = None

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, mechanism: str | None = None,
               implementation: str = "auto", mechanism_kwargs: Mapping[str, Any] | None = None,
               position: str = "none", rope_base: float = 10000.0,
               softcap: float | None = None, sliding_window: int | None = None,
               causal: bool = False, use_bias: bool = False, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    num_kv_heads, head_dim = resolve_heads(d_model, num_heads, num_kv_heads, head_dim)
    check_positive_int(sliding_window, "sliding_window", allow_none=True)
    position = positions_lib.check_position_kind(position)
    if position == "rope" and head_dim % 2:
      raise ValueError(f"position='rope' needs an even head_dim, got head_dim={head_dim}")
    if softcap is not None and (not isinstance(softcap, (int, float)) or softcap <= 0):
      raise ValueError(f"softcap must be a positive number or None, got {softcap!r}")
    if not isinstance(causal, bool):
      raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    fixed = type(self).mechanism_name
    if fixed is not None:
      if mechanism is not None and mechanism != fixed:
        raise TypeError(f"{type(self).__name__} is the {fixed!r} mechanism; mechanism= is for "
                        f"plain MultiHeadAttention, got mechanism={mechanism!r}")
      mechanism = fixed
    elif mechanism is None:
      mechanism = "softmax"
    kwargs = check_mechanism_kwargs(mechanism, implementation, mechanism_kwargs,
                                    core_mechanism=self.core_mechanism)
    self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = (
        d_model, num_heads, num_kv_heads, head_dim)
    self.mechanism, self.implementation = mechanism, implementation
    # Static, hashable: (name, value) pairs.
    self.core_kwargs = freeze(kwargs)
    self.position, self.rope_base = position, float(rope_base)
    self.softcap = None if softcap is None else float(softcap)
    self.sliding_window, self.causal = sliding_window, causal
    self.dtype = resolve_dtype(dtype)
    self.param_dtype = resolve_dtype(param_dtype, "param_dtype")

    def proj(eq, shape, names, bias_shape, bias_names, init):
      return nnx.Einsum(
          eq, shape, bias_shape if use_bias else None, dtype=self.dtype,
          param_dtype=self.param_dtype, kernel_init=logical_init(init, names),
          bias_init=logical_init(nnx.initializers.zeros_init(), bias_names), rngs=rngs)

    e, h, kh, d = d_model, num_heads, num_kv_heads, head_dim
    in_init = _fan_in_init(0, (1, 2))
    self.q = proj("BTE,EHD->BTHD", (e, h, d), ("embed", "heads", "head_dim"), (h, d),
                  ("heads", "head_dim"), in_init)
    self.k = proj("BTE,EKD->BTKD", (e, kh, d), ("embed", "kv_heads", "head_dim"), (kh, d),
                  ("kv_heads", "head_dim"), in_init)
    self.v = proj("BTE,EKD->BTKD", (e, kh, d), ("embed", "kv_heads", "head_dim"), (kh, d),
                  ("kv_heads", "head_dim"), in_init)
    self.o = proj("BTHD,HDE->BTE", (h, d, e), ("heads", "head_dim", "embed"), (e,),
                  ("embed",), _fan_in_init((0, 1), 2))
    self.cached_key = nnx.data(None)
    self.cached_value = nnx.data(None)
    self.cache_index = nnx.data(None)

  # -- KV cache ------------------------------------------------------------------------------

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    """Allocate ``cached_key``/``cached_value`` ``[batch, max_len, kv_heads, head_dim]``.

    Resets ``cache_index`` to 0. ``dtype`` defaults to the compute dtype.
    """
    check_positive_int(batch, "batch")
    check_positive_int(max_len, "max_len")
    dtype = self.dtype if dtype is None else resolve_dtype(dtype)
    shape = (batch, max_len, self.num_kv_heads, self.head_dim)
    self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
    self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def _write_cache(self, k: Array, v: Array, index: Array) -> tuple[Array, Array]:
    ck, cv = self.cached_key[...], self.cached_value[...]
    if k.shape[0] != ck.shape[0]:
      raise ValueError(f"decode batch size {k.shape[0]} does not match the cache batch size "
                       f"{ck.shape[0]} (init_cache(batch=...))")
    if k.shape[1] > ck.shape[1]:
      raise ValueError(f"decode step of {k.shape[1]} tokens exceeds the cache max_len "
                       f"{ck.shape[1]}")
    start = (0, index, 0, 0)
    ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
    cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
    self.cached_key[...] = ck
    self.cached_value[...] = cv
    self.cache_index[...] = index + k.shape[1]
    return ck.astype(k.dtype), cv.astype(v.dtype)

  # -- forward -------------------------------------------------------------------------------

  def project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    """``x [B, T, E]`` -> q ``[B, T, H, D]``, k, v ``[B, T, K, D]`` (before RoPE)."""
    return self.q(x), self.k(x), self.v(x)

  def structural_mask(self, q_len: int, kv_len: int, q_offset: Any,
                      decode: bool) -> masks.Mask | None:
    """Causal / sliding-window / cache-length mask for queries at ``q_offset + i``."""
    out = []
    if self.causal:
      out.append(masks.CausalMask(q_offset))
    if self.sliding_window is not None:
      w = self.sliding_window - 1
      out.append(masks.SlidingWindowMask(w, 0 if self.causal else w, q_offset))
    if decode:
      out.append(masks.ValidLengthMask(kv_lengths=q_offset + q_len))
    return masks.combine(*out)

  def attend(self, q: Array, k: Array, v: Array, *, mask: masks.Mask | None,
             bias: Array | None, q_offset: Any, head_mask: Array | None,
             return_weights: bool) -> Any:
    """Call ``attnlab.attention``; override to change the score computation."""
    alibi = (jnp.asarray(positions_lib.alibi_slopes(self.num_heads))
             if self.position == "alibi" else None)
    return attnlab.attention(
        q, k, v, mechanism=self.core_mechanism or self.mechanism,
        implementation=self.implementation, mask=mask, bias=bias, softcap=self.softcap,
        alibi_slopes=alibi, q_offset=q_offset, head_mask=head_mask,
        return_weights=return_weights, **dict(self.core_kwargs))

  def __call__(self, x: Float[Array, "B T E"], *, positions: Int[Array, "*B T"] | None = None,
               mask: masks.Mask | None = None, head_mask: Float[Array, "*B H"] | None = None,
               bias: Float[Array, "#B #H #T #S"] | None = None, decode: bool = False,
               return_weights: bool = False, deterministic: bool = True
               ) -> Float[Array, "B T E"] | tuple[Float[Array, "B T E"], Float[Array, "B H T S"]]:
    """Attention over ``x [B, T, E]``.

    Args:
      x: ``[batch, length, d_model]``.
      positions: int ``[B, T]`` or ``[T]`` for RoPE; default ``arange(T)`` (``+ cache_index``
        when decoding).
      mask: an extra ``attnlab.masks`` value ANDed with the causal / window mask (segment ids,
        padding). Not allowed with ``decode``.
      head_mask: ``[H]`` or ``[B, H]`` multiplier of each head's output (traced).
      bias: additive logits bias broadcastable to ``[B, H, T, S]`` (traced); ``S`` is the
        cache ``max_len`` when decoding.
      decode: write k/v at ``cache_index`` of the cache (see ``init_cache``) and attend to the
        cache with ``CausalMask(q_offset=cache_index) & ValidLengthMask(cache_index + T)``.
      return_weights: also return the attention weights ``[B, H, T, S]`` float32 (recomputed
        densely by core when a fused implementation ran).
      deterministic: unused here (no attention-weight dropout); kept for a uniform signature.

    Returns:
      ``[B, T, d_model]`` in the compute dtype, or ``(out, weights)``.
    """
    del deterministic
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must have shape [batch, length, d_model={self.d_model}], got "
                       f"{x.shape}")
    b, t, _ = x.shape
    offset: Any = 0
    if decode:
      if self.cached_key is None:
        raise ValueError("decode=True needs a KV cache: call init_cache(batch, max_len) first")
      if mask is not None:
        raise ValueError("an extra mask is not supported with decode=True")
      offset = self.cache_index[...]
    q, k, v = self.project_qkv(x)
    if self.position == "rope":
      pos = positions_lib.default_positions(b, t, offset) if positions is None else positions
      q = positions_lib.apply_rope(q, pos, base=self.rope_base)
      k = positions_lib.apply_rope(k, pos, base=self.rope_base)
    if decode:
      k, v = self._write_cache(k, v, offset)
    full_mask = masks.combine(self.structural_mask(t, k.shape[1], offset, decode), mask)
    out = self.attend(q, k, v, mask=full_mask, bias=bias, q_offset=offset, head_mask=head_mask,
                      return_weights=return_weights)
    weights = None
    if return_weights:
      out, weights = out
    y = self.o(out.astype(self.dtype))
    return (y, weights) if return_weights else y


# ----------------------------------------------------------------------------------------------
# Registry.

_MODULES: dict[str, type] = {}

# Keyword arguments the model builder hands to an attention module when its constructor
# accepts them (besides d_model, num_heads and rngs), from the model config.
SHARED_ARGUMENTS = ("num_kv_heads", "head_dim", "position", "rope_base", "softcap",
                    "sliding_window", "causal", "use_bias", "dtype", "param_dtype",
                    "implementation", "max_len", "num_layers", "layer_index", "mlp_dim")


def register_attention_module(mechanism: str, cls: type | None = None, *,
                              overwrite: bool = False) -> Any:
  """Use ``cls`` (an NNX module, see the module docstring) for ``mechanism``.

  Works as a call, ``register_attention_module("name", cls)``, or as a class decorator,
  ``@register_attention_module("name")`` (the decorated class gets ``mechanism_name``).
  ``mechanism`` may also be a name unknown to ``attnlab.core`` (set ``cls.core_mechanism`` to
  the core mechanism it calls). Re-registering the same class is a no-op; a different class
  needs ``overwrite=True``.
  """
  if not isinstance(mechanism, str) or not mechanism:
    raise TypeError(f"mechanism must be a non-empty str, got {mechanism!r}")
  if cls is None:
    def decorate(c: type) -> type:
      register_attention_module(mechanism, c, overwrite=overwrite)
      return c
    return decorate
  if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
    raise TypeError(f"cls must be an nnx.Module subclass, got {cls!r}")
  missing = [m for m in ("__call__", "init_cache") if not hasattr(cls, m)]
  if missing:
    raise TypeError(f"{cls.__name__} lacks {missing}; subclass MultiHeadAttention or define "
                    "them")
  old = _MODULES.get(mechanism)
  if old is not None and old is not cls and not overwrite:
    raise ValueError(f"mechanism {mechanism!r} already uses {old.__name__}; pass overwrite=True")
  if "mechanism_name" not in cls.__dict__:
    cls.mechanism_name = mechanism
  _MODULES[mechanism] = cls
  return cls


def accepted_arguments(cls: Callable[..., Any]) -> dict[str, inspect.Parameter]:
  """Keyword parameters of ``cls(...)``, following ``**kwargs`` up the class hierarchy.

  A constructor that forwards ``**kwargs`` to its parent accepts the parent's keywords too.
  """
  out: dict[str, inspect.Parameter] = {}
  for klass in (cls.__mro__ if isinstance(cls, type) else ()):
    init = klass.__dict__.get("__init__")
    if init is None:
      continue
    params = inspect.signature(init).parameters
    for name, p in params.items():
      if name != "self" and p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                       inspect.Parameter.POSITIONAL_OR_KEYWORD):
        out.setdefault(name, p)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
      break
  return out


def _core_attention_names() -> list[str]:
  """Core mechanisms usable by ``MultiHeadAttention``: kind "attention" with an implementation."""
  _load_core_plugins()
  out = []
  for name in attnlab.list_mechanisms():
    mech = core_registry.get_mechanism(name)
    if getattr(mech, "kind", "attention") == "attention" and mech.implementations:
      out.append(name)
  return out


def list_attention_mechanisms() -> list[str]:
  """Names valid as a model's attention mechanism: registered attention modules plus core
  mechanisms of kind "attention" that have an implementation."""
  return sorted(set(_core_attention_names()) | set(_MODULES))


def get_attention_module(mechanism: str) -> type:
  """The module class for ``mechanism`` (``MultiHeadAttention`` for plain core mechanisms)."""
  if isinstance(mechanism, str) and mechanism in _MODULES:
    return _MODULES[mechanism]
  if isinstance(mechanism, str) and mechanism in _core_attention_names():
    return MultiHeadAttention
  valid = list_attention_mechanisms()
  if isinstance(mechanism, str) and mechanism in attnlab.list_mechanisms():
    mech = core_registry.get_mechanism(mechanism)
    kind = getattr(mech, "kind", "attention")
    if kind in ("attention", "module", "mixer"):
      raise ValueError(
          f"attention mechanism {mechanism!r} (kind {kind!r}) has no NNX attention module: "
          "add one in attnlab/nn/mechanisms/ with @register_attention_module; valid "
          f"mechanisms: {valid}")
    raise ValueError(f"{mechanism!r} is a {kind!r} catalogue entry, not an attention "
                     f"mechanism (configs/mechanisms.py:{mechanism} selects it); valid attention "
                     f"mechanisms: {valid}")
  raise ValueError(f"unknown attention mechanism {mechanism!r}; valid mechanisms: {valid}")


__all__ = ["MultiHeadAttention", "register_attention_module", "get_attention_module",
           "list_attention_mechanisms", "accepted_arguments", "accepted_mechanism_kwargs",
           "check_mechanism_kwargs", "SHARED_ARGUMENTS"]
