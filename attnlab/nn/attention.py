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

``attention_fn`` adapts ``attnlab.attention`` to the ``attention_fn`` slot of
``flax.nnx.MultiHeadAttention``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, ClassVar, Iterator, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

import attnlab
from attnlab.core import api as core_api
from attnlab.core import common as core_common
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


_QK_NORMS = ("rmsnorm", "layernorm")


class MultiHeadAttention(nnx.Module):
  """Multi-head (GQA/MQA) attention over ``x [B, T, E]`` -> ``[B, T, E]``.

  Parameters (logical axes): ``q`` ``[embed, heads, head_dim]``, ``k``/``v``
  ``[embed, kv_heads, head_dim]`` (``embed`` is ``context_dim`` when set), ``o``
  ``[heads, head_dim, embed]`` (+ biases when ``use_bias``); with ``qk_norm`` also
  ``q_norm``/``k_norm`` scales (and biases for "layernorm") ``[head_dim]``. Subclasses may set
  ``core_mechanism`` (the ``attnlab.attention`` mechanism they call when their registered name
  is not a core mechanism).

  Options beyond the projections and the mechanism (all default to plain self-attention):

  * ``rope_scaling`` (with ``position="rope"``): a Hugging Face-style ``rope_scaling`` dict or
    an ``attnlab.nn.positions.RopeScaling`` (linear, llama3, yarn; see ``nn/positions.py``).
  * ``max_len``: the longest sequence the model sees. For the sigmoid mechanism without an
    explicit ``mechanism_kwargs["sigmoid_bias"]`` the module fixes ``sigmoid_bias =
    -log(max_len)`` at construction, so the bias does not depend on the length of each call's
    keys: a causal model then gives the same logits when decoding with the KV cache (whose key
    length is the cache size), when tokens are appended, or when padding keys are added. With
    ``max_len=None`` the core default ``b = -log(kv_len)`` applies, which depends on the key
    length of each call (full pass vs cache size vs padded length). The model builder passes
    ``config.model.max_len``.
  * cross-attention (``context`` argument of ``__call__``): keys and values are projected from
    ``context [B, S, context_dim]`` (``context_dim`` defaults to ``d_model``) instead of ``x``.
    No causal or sliding-window mask is applied between ``x`` and the context, and neither
    RoPE nor ALiBi (positions of two different sequences are not comparable); only the
    caller's ``mask`` (e.g. ``ValidLengthMask`` for context padding) and ``bias``. For
    encoder-decoder decoding, ``init_cache(batch, max_len, context_len=S)`` allocates a cross
    cache ``[batch, S, kv_heads, head_dim]``: the first ``decode=True`` call with ``context``
    projects and stores the context K/V, later ``decode=True`` calls with ``context=None``
    reuse them (outputs are NaN if the cross cache was never filled). After
    ``init_cache(..., context_len=S)`` the module is a cross-attention decoder: every
    ``decode=True`` call attends to the context; call ``init_cache`` without ``context_len`` to
    use it for self-attention decoding again. Subclasses that override ``project_qkv`` do not
    support cross-attention (it raises).
  * ``dropout_rate``: dropout on the attention probabilities when ``deterministic=False``, as
    ``flax.nnx.MultiHeadAttention`` does (the mask is shared across batch and heads when
    ``broadcast_dropout``, Flax's default); it draws from the ``'dropout'`` stream of the
    ``rngs`` given at construction (the ``'default'`` stream when there is none). Fused
    implementations do not expose the probabilities, so a dropout call runs the mechanism's
    dense ``"xla"`` implementation with ``return_weights`` and computes
    ``dropout(weights) @ v`` (then ``head_mask``): O(T*S) memory per head, about twice the
    work of a fused call. Deterministic calls are unchanged. ``return_weights`` returns the
    weights before dropout. Subclasses whose ``attend`` does more than produce weights (e.g.
    rescales head outputs itself) should override ``attend_with_dropout``.
  * ``qk_norm``: ``"rmsnorm"`` or ``"layernorm"`` applied to q and k per head over
    ``head_dim`` (one scale ``[head_dim]`` shared by the heads), after the projections and
    before RoPE, as in ViT-22B ("Scaling Vision Transformers to 22 Billion Parameters", arXiv
    2302.05442) and OLMo 2. ``qk_norm_eps`` is its epsilon.
  """

  core_mechanism: ClassVar[str | None] = None
  #: Set by ``@register_attention_module(name)`` on subclasses: the mechanism is fixed by the
  #: class (``mechanism=`` is for plain ``MultiHeadAttention`` only).
  mechanism_name: ClassVar[str | None] = None

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, mechanism: str | None = None,
               implementation: str = "auto", mechanism_kwargs: Mapping[str, Any] | None = None,
               position: str = "none", rope_base: float = 10000.0,
               rope_scaling: Mapping[str, Any] | positions_lib.RopeScaling | None = None,
               softcap: float | None = None, sliding_window: int | None = None,
               causal: bool = False, use_bias: bool = False, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, max_len: int | None = None,
               context_dim: int | None = None, dropout_rate: float = 0.0,
               broadcast_dropout: bool = True, qk_norm: str | None = None,
               qk_norm_eps: float = 1e-6, rngs: nnx.Rngs):
    num_kv_heads, head_dim = resolve_heads(d_model, num_heads, num_kv_heads, head_dim)
    check_positive_int(sliding_window, "sliding_window", allow_none=True)
    check_positive_int(max_len, "max_len", allow_none=True)
    check_positive_int(context_dim, "context_dim", allow_none=True)
    position = positions_lib.check_position_kind(position)
    if position == "rope" and head_dim % 2:
      raise ValueError(f"position='rope' needs an even head_dim, got head_dim={head_dim}")
    if softcap is not None and (not isinstance(softcap, (int, float)) or softcap <= 0):
      raise ValueError(f"softcap must be a positive number or None, got {softcap!r}")
    if not isinstance(causal, bool):
      raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    if qk_norm is not None and qk_norm not in _QK_NORMS:
      raise ValueError(f"qk_norm must be one of {list(_QK_NORMS)} or None, got {qk_norm!r}")
    if not isinstance(qk_norm_eps, (int, float)) or qk_norm_eps <= 0:
      raise ValueError(f"qk_norm_eps must be a positive number, got {qk_norm_eps!r}")
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
    if ((self.core_mechanism or mechanism) == "sigmoid" and "sigmoid_bias" not in kwargs
        and max_len is not None):
      # A bias fixed by the model, not by each call's key length (see the class docstring).
      kwargs["sigmoid_bias"] = -math.log(max_len)
    self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = (
        d_model, num_heads, num_kv_heads, head_dim)
    self.mechanism, self.implementation = mechanism, implementation
    # Static, hashable: (name, value) pairs.
    self.core_kwargs = freeze(kwargs)
    self.position, self.rope_base = position, float(rope_base)
    self.rope_scaling = positions_lib.rope_scaling(rope_scaling)  # None or a frozen dataclass
    self.softcap = None if softcap is None else float(softcap)
    self.sliding_window, self.causal = sliding_window, causal
    self.dtype = resolve_dtype(dtype)
    self.param_dtype = resolve_dtype(param_dtype, "param_dtype")
    self.max_len = max_len
    self.context_dim = d_model if context_dim is None else context_dim
    self.dropout_rate, self.broadcast_dropout = float(dropout_rate), bool(broadcast_dropout)
    self.qk_norm = qk_norm

    def proj(eq, shape, names, bias_shape, bias_names, init):
      return nnx.Einsum(
          eq, shape, bias_shape if use_bias else None, dtype=self.dtype,
          param_dtype=self.param_dtype, kernel_init=logical_init(init, names),
          bias_init=logical_init(nnx.initializers.zeros_init(), bias_names), rngs=rngs)

    e, h, kh, d = d_model, num_heads, num_kv_heads, head_dim
    ec = self.context_dim
    in_init = _fan_in_init(0, (1, 2))
    self.q = proj("BTE,EHD->BTHD", (e, h, d), ("embed", "heads", "head_dim"), (h, d),
                  ("heads", "head_dim"), in_init)
    self.k = proj("BTE,EKD->BTKD", (ec, kh, d), ("embed", "kv_heads", "head_dim"), (kh, d),
                  ("kv_heads", "head_dim"), in_init)
    self.v = proj("BTE,EKD->BTKD", (ec, kh, d), ("embed", "kv_heads", "head_dim"), (kh, d),
                  ("kv_heads", "head_dim"), in_init)
    self.o = proj("BTHD,HDE->BTE", (h, d, e), ("heads", "head_dim", "embed"), (e,),
                  ("embed",), _fan_in_init((0, 1), 2))
    # Created after the projections, and only when used, so that the default configuration
    # draws the same parameters from ``rngs`` as before these options existed.
    self.q_norm = nnx.data(None)
    self.k_norm = nnx.data(None)
    if qk_norm is not None:
      self.q_norm = self._make_qk_norm(qk_norm, float(qk_norm_eps), rngs)
      self.k_norm = self._make_qk_norm(qk_norm, float(qk_norm_eps), rngs)
    self.weights_dropout = nnx.data(None)
    if self.dropout_rate > 0:
      self.weights_dropout = nnx.Dropout(
          self.dropout_rate, broadcast_dims=(0, 1) if self.broadcast_dropout else (),
          rngs=rngs)
    self.cached_key = nnx.data(None)
    self.cached_value = nnx.data(None)
    self.cache_index = nnx.data(None)
    self.cross_key = nnx.data(None)
    self.cross_value = nnx.data(None)
    self.cross_filled = nnx.data(None)

  def _make_qk_norm(self, kind: str, eps: float, rngs: nnx.Rngs) -> nnx.Module:
    scale = logical_init(nnx.initializers.ones_init(), ("head_dim",))
    if kind == "rmsnorm":
      return nnx.RMSNorm(self.head_dim, epsilon=eps, dtype=self.dtype,
                         param_dtype=self.param_dtype, scale_init=scale, rngs=rngs)
    return nnx.LayerNorm(self.head_dim, epsilon=eps, dtype=self.dtype,
                         param_dtype=self.param_dtype, scale_init=scale,
                         bias_init=logical_init(nnx.initializers.zeros_init(), ("head_dim",)),
                         rngs=rngs)

  # -- KV cache ------------------------------------------------------------------------------

  def init_cache(self, batch: int, max_len: int, dtype: Any = None, *,
                 context_len: int | None = None) -> None:
    """Allocate ``cached_key``/``cached_value`` ``[batch, max_len, kv_heads, head_dim]``.

    Resets ``cache_index`` to 0. ``dtype`` defaults to the compute dtype. ``context_len``:
    also allocate the cross-attention cache ``cross_key``/``cross_value``
    ``[batch, context_len, kv_heads, head_dim]`` (empty until a ``decode=True`` call with
    ``context``); without it the cross cache is dropped. See the class docstring.
    """
    check_positive_int(batch, "batch")
    check_positive_int(max_len, "max_len")
    check_positive_int(context_len, "context_len", allow_none=True)
    dtype = self.dtype if dtype is None else resolve_dtype(dtype)
    shape = (batch, max_len, self.num_kv_heads, self.head_dim)
    self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
    self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))
    if context_len is None:
      self.cross_key = nnx.data(None)
      self.cross_value = nnx.data(None)
      self.cross_filled = nnx.data(None)
    else:
      cshape = (batch, context_len, self.num_kv_heads, self.head_dim)
      self.cross_key = nnx.Cache(jnp.zeros(cshape, dtype))
      self.cross_value = nnx.Cache(jnp.zeros(cshape, dtype))
      self.cross_filled = nnx.Cache(jnp.zeros((), jnp.bool_))

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

  def normalize_qk(self, q: Array, k: Array) -> tuple[Array, Array]:
    """``qk_norm`` over ``head_dim`` of q ``[B, T, H, D]`` and k ``[B, S, K, D]`` (identity
    without ``qk_norm``)."""
    if self.qk_norm is None:
      return q, k
    return self.q_norm(q), self.k_norm(k)

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

  @contextlib.contextmanager
  def _temporarily(self, **attrs: Any) -> Iterator[None]:
    """Set static attributes for the duration of one ``attend`` call (subclasses' ``attend``
    read them), then restore them."""
    old = {name: getattr(self, name) for name in attrs}
    try:
      for name, value in attrs.items():
        setattr(self, name, value)
      yield
    finally:
      for name, value in old.items():
        setattr(self, name, value)

  def _dense_settings(self) -> dict[str, Any]:
    """``implementation``/``core_kwargs`` for the dense "xla" implementation (when the core
    mechanism has one); options the dense implementation refuses (block sizes) are dropped."""
    name = self.core_mechanism or self.mechanism
    try:
      mech = core_registry.get_mechanism(name)
    except ValueError:
      return {}
    if "xla" not in mech.implementations or self.implementation == "xla":
      return {}
    accepted = accepted_mechanism_kwargs(name, "xla")
    kwargs = dict(self.core_kwargs)
    if accepted is not None:
      kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return dict(implementation="xla", core_kwargs=freeze(kwargs))

  def attend_with_dropout(self, q: Array, k: Array, v: Array, *, mask: masks.Mask | None,
                          bias: Array | None, q_offset: Any, head_mask: Array | None,
                          return_weights: bool) -> Any:
    """``dropout(weights) @ v`` with the weights of ``attend`` (dense "xla" implementation)."""
    with self._temporarily(**self._dense_settings()):
      _, weights = self.attend(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                               head_mask=None, return_weights=True)
    dropped = self.weights_dropout(weights, deterministic=False)
    out = core_common.weighted_values(dropped, v)
    if head_mask is not None:
      hm = jnp.asarray(head_mask)
      out = core_common.apply_head_mask(out, hm[None] if hm.ndim == 1 else hm)
    out = out.astype(q.dtype)
    return (out, weights) if return_weights else out

  def _attention(self, q: Array, k: Array, v: Array, *, deterministic: bool,
                 **kwargs: Any) -> Any:
    if self.weights_dropout is not None and not deterministic:
      return self.attend_with_dropout(q, k, v, **kwargs)
    return self.attend(q, k, v, **kwargs)

  def _cross_kv(self, context: Array | None, batch: int, decode: bool) -> tuple[Array, Array]:
    """Context keys/values (projected, ``qk_norm``ed k) and, when decoding, the cross cache."""
    if type(self).project_qkv is not MultiHeadAttention.project_qkv:
      raise ValueError(f"{type(self).__name__} overrides project_qkv and does not support "
                       "cross-attention (context=)")
    if context is not None:
      if context.ndim != 3 or context.shape[-1] != self.context_dim:
        raise ValueError(f"context must have shape [batch, context_len, context_dim="
                         f"{self.context_dim}], got {context.shape}")
      if context.shape[0] != batch:
        raise ValueError(f"context batch size {context.shape[0]} does not match x's {batch}")
      k, v = self.k(context), self.v(context)
      if not decode:
        return k, v
      ck = self.cross_key[...]
      if ck.shape[:2] != k.shape[:2]:
        raise ValueError(f"context [batch, context_len]={k.shape[:2]} does not match the cross "
                         f"cache {ck.shape[:2]} (init_cache(batch, ..., context_len=...))")
      self.cross_key[...] = k.astype(ck.dtype)
      self.cross_value[...] = v.astype(ck.dtype)
      self.cross_filled[...] = jnp.ones((), jnp.bool_)
      return k, v
    ck, cv = self.cross_key[...], self.cross_value[...]
    if ck.shape[0] != batch:
      raise ValueError(f"decode batch size {batch} does not match the cross cache batch size "
                       f"{ck.shape[0]}")
    return ck.astype(self.dtype), cv.astype(self.dtype)

  def __call__(self, x: Float[Array, "B T E"], context: Float[Array, "B S C"] | None = None, *,
               positions: Int[Array, "*B T"] | None = None,
               mask: masks.Mask | None = None, head_mask: Float[Array, "*B H"] | None = None,
               bias: Float[Array, "#B #H #T #S"] | None = None, decode: bool = False,
               return_weights: bool = False, deterministic: bool = True
               ) -> Float[Array, "B T E"] | tuple[Float[Array, "B T E"], Float[Array, "B H T S"]]:
    """Attention over ``x [B, T, E]`` (self-attention, or cross-attention to ``context``).

    Args:
      x: ``[batch, length, d_model]``.
      context: ``[batch, context_len, context_dim]``: cross-attention (keys/values from the
        context, no causal/window mask, no RoPE/ALiBi; see the class docstring). Default
        None: self-attention (or, after ``init_cache(..., context_len=S)`` with ``decode``,
        cross-attention to the cached context).
      positions: int ``[B, T]`` or ``[T]`` for RoPE; default ``arange(T)`` (``+ cache_index``
        when decoding).
      mask: an extra ``attnlab.masks`` value ANDed with the causal / window mask (segment ids,
        padding; context padding for cross-attention). Not allowed with ``decode``.
      head_mask: ``[H]`` or ``[B, H]`` multiplier of each head's output (traced).
      bias: additive logits bias broadcastable to ``[B, H, T, S]`` (traced); ``S`` is the
        cache ``max_len`` when decoding (the context length for cross-attention).
      decode: write k/v at ``cache_index`` of the cache (see ``init_cache``) and attend to the
        cache with ``CausalMask(q_offset=cache_index) & ValidLengthMask(cache_index + T)``.
        Cross-attention: fill the cross cache from ``context``, or read it when ``context``
        is None.
      return_weights: also return the attention weights ``[B, H, T, S]`` float32 (recomputed
        densely by core when a fused implementation ran; before dropout).
      deterministic: False applies attention-probability dropout when ``dropout_rate > 0``.

    Returns:
      ``[B, T, d_model]`` in the compute dtype, or ``(out, weights)``.
    """
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must have shape [batch, length, d_model={self.d_model}], got "
                       f"{x.shape}")
    b, t, _ = x.shape
    cross_decode = decode and self.cross_key is not None
    if context is not None or cross_decode:
      return self._cross_call(x, context, mask=mask, head_mask=head_mask, bias=bias,
                              decode=decode, return_weights=return_weights,
                              deterministic=deterministic)
    if self.context_dim != self.d_model:
      raise ValueError(f"this module projects keys/values from context_dim={self.context_dim} "
                       f"features (cross-attention); pass context=")
    offset: Any = 0
    if decode:
      if self.cached_key is None:
        raise ValueError("decode=True needs a KV cache: call init_cache(batch, max_len) first")
      if mask is not None:
        raise ValueError("an extra mask is not supported with decode=True")
      offset = self.cache_index[...]
    q, k, v = self.project_qkv(x)
    q, k = self.normalize_qk(q, k)
    if self.position == "rope":
      pos = positions_lib.default_positions(b, t, offset) if positions is None else positions
      q = positions_lib.apply_rope(q, pos, base=self.rope_base, scaling=self.rope_scaling)
      k = positions_lib.apply_rope(k, pos, base=self.rope_base, scaling=self.rope_scaling)
    if decode:
      k, v = self._write_cache(k, v, offset)
    full_mask = masks.combine(self.structural_mask(t, k.shape[1], offset, decode), mask)
    out = self._attention(q, k, v, mask=full_mask, bias=bias, q_offset=offset,
                          head_mask=head_mask, return_weights=return_weights,
                          deterministic=deterministic)
    return self._output(out, return_weights)

  def _cross_call(self, x: Array, context: Array | None, *, mask: masks.Mask | None,
                  head_mask: Array | None, bias: Array | None, decode: bool,
                  return_weights: bool, deterministic: bool) -> Any:
    b = x.shape[0]
    if decode and mask is not None:
      raise ValueError("an extra mask is not supported with decode=True")
    if decode and self.cross_key is None:
      raise ValueError("cross-attention decoding needs a cross cache: call "
                       "init_cache(batch, max_len, context_len=...) first")
    q = self.q(x)
    k, v = self._cross_kv(context, b, decode)
    q, k = self.normalize_qk(q, k)
    # No RoPE/ALiBi across sequences, no causal/window mask between x and the context.
    with self._temporarily(position="none"):
      out = self._attention(q, k, v, mask=mask, bias=bias, q_offset=0, head_mask=head_mask,
                            return_weights=return_weights, deterministic=deterministic)
    if decode and context is None:
      filled = self.cross_filled[...]
      if return_weights:
        out = (jnp.where(filled, out[0], jnp.nan).astype(out[0].dtype), out[1])
      else:
        out = jnp.where(filled, out, jnp.nan).astype(out.dtype)
    return self._output(out, return_weights)

  def _output(self, out: Any, return_weights: bool) -> Any:
    weights = None
    if return_weights:
      out, weights = out
    y = self.o(out.astype(self.dtype))
    return (y, weights) if return_weights else y


# ----------------------------------------------------------------------------------------------
# flax.nnx.MultiHeadAttention adapter.


def _flat_batch(x: Array | None, batch_shape: tuple[int, ...], name: str) -> Array | None:
  """``[batch..., a, b, c]`` (broadcastable) -> ``[prod(batch) | 1, a, b, c]``."""
  if x is None:
    return None
  x = jnp.asarray(x)
  nb = len(batch_shape)
  if x.ndim > nb + 3:
    raise ValueError(f"attention_fn: {name} has shape {x.shape}, more dimensions than "
                     f"[batch..., heads, q_len, kv_len] with batch dims {batch_shape}")
  x = x.reshape((1,) * (nb + 3 - x.ndim) + x.shape)
  if all(n == 1 for n in x.shape[:nb]):
    return x.reshape((1,) + x.shape[nb:])
  x = jnp.broadcast_to(x, batch_shape + x.shape[nb:])
  return x.reshape((math.prod(batch_shape),) + x.shape[nb:])


def attention_fn(query: Array, key: Array, value: Array, bias: Array | None = None,
                 mask: Array | None = None, broadcast_dropout: bool = True,
                 dropout_rng: Array | None = None, dropout_rate: float = 0.0,
                 deterministic: bool = False, dtype: Any = None, precision: Any = None,
                 module: nnx.Module | None = None, promote_dtype: Callable[..., Any] | None = None,
                 is_causal: bool = False, *, mechanism: str = "softmax",
                 implementation: str = "auto", **mechanism_kwargs: Any) -> Array:
  """``attnlab.attention`` with the signature of ``flax.nnx.dot_product_attention``.

  For ``flax.nnx.MultiHeadAttention(..., attention_fn=attnlab.nn.attention_fn)``; choose the
  mechanism with ``functools.partial(attention_fn, mechanism="sigmoid", sigmoid_bias=...)``.

  Args:
    query: ``[batch..., q_len, heads, head_dim]`` (any number of batch dimensions, or none).
    key, value: ``[batch..., kv_len, kv_heads, head_dim]``.
    bias: additive logits bias broadcastable to ``[batch..., heads, q_len, kv_len]``.
    mask: boolean (or 0/1) array broadcastable to ``[batch..., heads, q_len, kv_len]``, True
      where attention is allowed; becomes an ``attnlab.masks.ArrayMask``. Its heads dimension
      must be 1 (attnlab masks are shared by the heads: pass per-head masks as ``bias``).
      Unlike Flax, a query row with no allowed key gets zero output (Flax averages the values).
    broadcast_dropout, dropout_rng, dropout_rate, deterministic: attention-probability
      dropout exactly as Flax (same Bernoulli draw from ``dropout_rng``; with
      ``broadcast_dropout`` one mask shared by batch and heads). When active the mechanism's
      dense "xla" implementation computes the weights (``return_weights``) and the output is
      ``dropout(weights) @ value``.
    dtype: compute dtype (``promote_dtype`` of q, k, v; default: inferred).
    precision: must be None (attnlab implementations choose their own precision).
    module: when given, the attention weights ``[batch..., heads, q_len, kv_len]`` are sown
      into its ``nnx.Intermediate`` collection as ``attention_weights`` (as Flax does).
    promote_dtype: Flax's dtype promotion function (default ``flax.nnx.nn.dtypes.promote_dtype``).
    is_causal: AND a causal mask.
    mechanism, implementation, **mechanism_kwargs: as ``attnlab.attention``.

  Returns:
    ``[batch..., q_len, heads, v_dim]``.
  """
  if precision is not None:
    raise ValueError("attnlab.nn.attention_fn: precision must be None (attnlab implementations "
                     f"set their own matmul precision), got {precision!r}")
  if promote_dtype is None:
    from flax.nnx.nn import dtypes as flax_dtypes  # pylint: disable=g-import-not-at-top
    promote_dtype = flax_dtypes.promote_dtype
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  dtype = query.dtype
  if query.ndim < 3 or key.ndim != query.ndim or value.ndim != query.ndim:
    raise ValueError("attention_fn: query, key and value must have shapes "
                     "[batch..., length, heads, head_dim] with the same batch dimensions, got "
                     f"{query.shape}, {key.shape}, {value.shape}")
  batch_shape = tuple(query.shape[:-3])
  if tuple(key.shape[:-3]) != batch_shape or tuple(value.shape[:-3]) != batch_shape:
    raise ValueError(f"attention_fn: batch dimensions differ: {query.shape}, {key.shape}, "
                     f"{value.shape}")
  nb = math.prod(batch_shape) if batch_shape else 1
  q = query.reshape((nb,) + query.shape[-3:])
  k = key.reshape((nb,) + key.shape[-3:])
  v = value.reshape((nb,) + value.shape[-3:])
  tq, tk = q.shape[1], k.shape[1]
  bias4 = _flat_batch(bias, batch_shape, "bias")
  mask_value = None
  if mask is not None:
    m = _flat_batch(jnp.asarray(mask).astype(jnp.bool_), batch_shape, "mask")
    if m.shape[1] != 1:
      raise ValueError(f"attention_fn: mask {jnp.shape(mask)} differs per head; attnlab masks "
                       "are shared by the heads (pass per-head masks as an additive bias)")
    mask_value = masks.ArrayMask(jnp.broadcast_to(m[:, 0], (m.shape[0], tq, tk)))
  dropout = not deterministic and dropout_rate > 0.0
  if dropout and dropout_rng is None:
    raise ValueError("attention_fn: dropout_rate > 0 with deterministic=False needs "
                     "dropout_rng")
  want_weights = dropout or module is not None
  if dropout:
    mech = core_registry.get_mechanism(mechanism)
    if "xla" in mech.implementations:
      implementation = "xla"
  out = attnlab.attention(q, k, v, mechanism=mechanism, implementation=implementation,
                          mask=mask_value, bias=bias4, is_causal=is_causal,
                          return_weights=want_weights, **mechanism_kwargs)
  if want_weights:
    out, weights = out
    weights = weights.astype(dtype)
    if module is not None:
      module.sow(nnx.Intermediate, "attention_weights",
                 weights.reshape(batch_shape + weights.shape[1:]))
    if dropout:
      keep_prob = 1.0 - dropout_rate
      shape = (1, 1) + weights.shape[-2:] if broadcast_dropout else weights.shape
      keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
      weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype=dtype))
      out = core_common.weighted_values(weights, v)
  out = out.astype(dtype)
  return out.reshape(batch_shape + out.shape[1:])


# ----------------------------------------------------------------------------------------------
# Registry.

_MODULES: dict[str, type] = {}

# Keyword arguments the model builder hands to an attention module when its constructor
# accepts them (besides d_model, num_heads and rngs), from the model config.
SHARED_ARGUMENTS = ("num_kv_heads", "head_dim", "position", "rope_base", "rope_scaling",
                    "softcap", "sliding_window", "causal", "use_bias", "dtype", "param_dtype",
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


__all__ = ["MultiHeadAttention", "attention_fn", "register_attention_module",
           "get_attention_module", "list_attention_mechanisms", "accepted_arguments",
           "accepted_mechanism_kwargs", "check_mechanism_kwargs", "SHARED_ARGUMENTS"]
