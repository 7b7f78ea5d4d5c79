"""``attention(...)``: one entry point that dispatches by mechanism and implementation."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry

Array = jax.Array

# Above this many float32 logits per call (B*H*Tq*Tk*4 bytes), "auto" prefers a
# memory-efficient implementation over the dense one.
AUTO_DENSE_LIMIT_BYTES = 64 * 2**20

_plugins_loaded = False
_plugin_error: Exception | None = None  # why attnlab.kernels failed to import, if it did


def load_plugins() -> None:
  """Import optional implementations (Pallas kernels) that register themselves."""
  global _plugins_loaded
  if _plugins_loaded:
    return
  global _plugin_error
  _plugins_loaded = True
  try:
    importlib.import_module("attnlab.kernels")
  except ImportError as e:  # kernels are optional for users of attnlab.core only
    _plugin_error = e


def choose_implementation(mechanism: str, implementation: str, **call: Any) -> str:
  """Resolve ``implementation`` ("auto" or a name) for a call; raises on unsupported."""
  mech = registry.get_mechanism(mechanism)
  if implementation in ("auto", "pallas"):
    load_plugins()
  if not mech.implementations:
    raise ValueError(f"mechanism {mechanism!r} (kind {mech.kind!r}) has no pure attention "
                     "function; build its module with attnlab.nn / attnlab.models, or train it "
                     f"with configs/mechanisms.py:{mechanism}")
  if implementation != "auto":
    if implementation not in mech.implementations:
      why = (f" (attnlab.kernels failed to import: {_plugin_error!r})"
             if implementation == "pallas" and _plugin_error is not None else "")
      raise ValueError(f"unknown implementation {implementation!r} for mechanism "
                       f"{mechanism!r}; available: {sorted(mech.implementations)} or 'auto'"
                       f"{why}")
    reason = mech.implementations[implementation].supports(**call)
    if reason:
      raise ValueError(f"implementation {implementation!r} of {mechanism!r} does not support "
                       f"this call: {reason}")
    return implementation
  platform = jax.default_backend()
  q, k = call["q"], call["k"]
  dense_bytes = q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1] * 4
  reasons, supported = {}, []
  order = [n for n in registry.AUTO_ORDER if n in mech.implementations]
  order += [n for n in mech.implementations if n not in order]
  for name in order:
    impl = mech.implementations[name]
    if impl.auto_platforms and platform not in impl.auto_platforms:
      reasons[name] = f"not chosen automatically on {platform}"
      continue
    reason = impl.supports(**call)
    if reason is None:
      supported.append(name)
    else:
      reasons[name] = reason
  if supported:
    # Small problems: the dense path is faster and as light as the chunked one.
    if (supported[0] == "chunked" and "xla" in supported
        and dense_bytes <= AUTO_DENSE_LIMIT_BYTES):
      return "xla"
    return supported[0]
  raise ValueError(f"no implementation of {mechanism!r} supports this call: {reasons}")


class UnknownArgumentError(TypeError, ValueError):
  """A keyword argument that no implementation of the mechanism takes (usually a typo).

  A ``TypeError`` like Python's own for an unexpected keyword; also a ``ValueError`` so
  callers that caught the earlier "no implementation supports this call" error still do.
  """


# attention()'s own parameters (besides q, k, v), always valid.
_ATTENTION_PARAMS = ("mechanism", "mask", "bias", "is_causal", "scale", "implementation",
                     "softcap", "alibi_slopes", "q_offset", "head_mask", "return_weights",
                     "query_seq_lengths", "key_value_seq_lengths", "local_window_size")


def _impl_keywords(impl: registry.Implementation) -> tuple[set[str], bool]:
  """(keywords ``impl.fn`` names explicitly, whether it also takes ``**kwargs``)."""
  try:
    params = inspect.signature(impl.fn).parameters.values()
  except (TypeError, ValueError):
    return set(), True
  names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
  return names - {"q", "k", "v"}, any(p.kind is p.VAR_KEYWORD for p in params)


def _unaccepted(mech: registry.Mechanism, names: set[str], call: dict[str, Any]) -> set[str]:
  """The ``names`` that no implementation of ``mech`` takes. An implementation with
  ``**kwargs`` takes a name unless its ``supports`` reports it as an unexpected argument."""
  left = set(names)
  for impl in mech.implementations.values():
    explicit, var_kw = _impl_keywords(impl)
    left -= explicit
    if var_kw and left:
      reason = impl.supports(**call) or ""
      rejected = ({n for n in left if repr(n) in reason}
                  if "unexpected argument" in reason else set())
      left &= rejected
  return left


def check_keywords(mechanism: str, implementation: str, kwargs: dict[str, Any],
                   call: dict[str, Any]) -> None:
  """Raise ``UnknownArgumentError`` (a TypeError) for keywords of ``kwargs`` that no
  implementation of ``mechanism`` takes, listing the valid ones."""
  mech = registry.get_mechanism(mechanism)
  if not kwargs or not mech.implementations:
    return
  bad = _unaccepted(mech, set(kwargs), call)
  if bad and not _plugins_loaded:
    load_plugins()  # a plugin implementation may take them
    bad = _unaccepted(mech, bad, call)
  if not bad:
    return
  valid = set(_ATTENTION_PARAMS)
  open_ended = []
  for impl_name, impl in mech.implementations.items():
    explicit, var_kw = _impl_keywords(impl)
    valid |= explicit
    if var_kw:
      open_ended.append(impl_name)
  hints = []
  for name in sorted(bad):
    close = difflib.get_close_matches(name, sorted(valid), n=1)
    if close:
      hints.append(f"{name!r} -> did you mean {close[0]!r}?")
  msg = (f"attention() got unexpected keyword argument(s) {sorted(bad)}: no implementation of "
         f"{mechanism!r} supports {sorted(bad)}")
  if hints:
    msg += f" ({'; '.join(hints)})"
  msg += f". Valid keywords: {sorted(valid)}"
  if open_ended:
    msg += f", plus the options of implementation(s) {sorted(open_ended)}"
  impl = mech.implementations.get(implementation)
  reason = impl.supports(**call) if impl is not None else None
  if reason:
    msg += (f". (implementation {implementation!r} of {mechanism!r} does not support this "
            f"call: {reason})")
  raise UnknownArgumentError(msg)


def _check_positive(name: str, val: Any) -> None:
  """``val`` must be None or a positive finite real number (traced values are not checked)."""
  if val is None or isinstance(val, jax.core.Tracer):
    return
  if isinstance(val, (bool, np.bool_)):
    raise ValueError(f"{name} must be a positive finite number or None, got {val!r}")
  if not isinstance(val, numbers.Real):
    dtype = getattr(val, "dtype", None)
    if getattr(val, "shape", None) != () or dtype is None or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
      raise ValueError(f"{name} must be a positive finite number or None, got "
                       f"{type(val).__name__} {val!r}")
  if not (math.isfinite(float(val)) and float(val) > 0):
    raise ValueError(f"{name} must be a positive finite number or None, got {val!r}")


def attention(
    q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"], v: Float[Array, "B Tk K Dv"], *,
    mechanism: str = "softmax", mask: Any = None,
    bias: Float[ArrayLike, "#B #H #Tq #Tk"] | None = None, is_causal: bool = False,
    scale: float | None = None, implementation: str = "auto", softcap: float | None = None,
    alibi_slopes: Float[ArrayLike, "H"] | Float[ArrayLike, "#B H"] | None = None,
    q_offset: Any = 0, head_mask: Float[ArrayLike, "H"] | Float[ArrayLike, "#B H"] | None = None,
    return_weights: bool = False, query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None, score_mod: Any = None, **kwargs: Any,
) -> Float[Array, "B Tq H Dv"] | tuple[Float[Array, "B Tq H Dv"], Float[Array, "B H Tq Tk"]]:
  """Attention with a chosen mechanism and implementation.

  Args:
    q: ``[batch, q_len, heads, head_dim]`` (or unbatched ``[q_len, heads, head_dim]``, with
      k, v unbatched too; the output is then unbatched).
    k: ``[batch, kv_len, kv_heads, head_dim]``; ``heads % kv_heads == 0`` (MHA/GQA/MQA).
    v: ``[batch, kv_len, kv_heads, v_dim]``.
    mechanism: a name from ``list_mechanisms()``.
    mask: an ``attnlab.masks.Mask`` value (causal, window, segments, prefix-LM, lengths, ...),
      or a boolean array broadcastable to ``[batch, heads, q_len, kv_len]`` (True = attend):
      without a head axis it becomes a ``masks.ArrayMask``; a per-head one becomes an additive
      ``-inf`` bias.
    bias: additive logits bias broadcastable to ``[batch, heads, q_len, kv_len]`` (e.g.
      ``[q_len, kv_len]``).
    is_causal: AND a causal mask (query i sees keys ``<= i + q_offset``).
    scale: logit scale, default ``1/sqrt(head_dim)``.
    implementation: "auto", "xla" (dense reference), "chunked", "pallas", ...
    softcap: logit soft-capping ``c * tanh(x / c)`` applied before bias/ALiBi.
    alibi_slopes: ``[heads]`` or ``[batch, heads]``; adds ``-slope * |i - j|``.
    q_offset: absolute position of query 0 (decoding with a KV cache). Masks carrying a
      ``q_offset`` (``CausalMask``, ``SlidingWindowMask``, ``LocalMask``, ``PrefixLMMask``)
      built with the default ``q_offset=0`` follow this value, so ``mask=CausalMask()`` and
      ``is_causal=True`` agree; a mask built with a different non-zero ``q_offset`` raises
      ValueError. With ``q_offset=0`` a mask keeps its own offset.
    head_mask: ``[heads]`` or ``[batch, heads]`` multiplier of each head's output (ablations).
    return_weights: also return the attention weights ``[batch, heads, q_len, kv_len]``
      (recomputed densely when a fused implementation ran).
    query_seq_lengths, key_value_seq_lengths: int ``[batch]`` real tokens per example, as
      ``jax.nn.dot_product_attention`` (``masks.ValidLengthMask``).
    local_window_size: ``(left, right)`` or a symmetric int, as jax.nn: query ``i`` sees keys
      ``i - left .. i + right`` (``masks.SlidingWindowMask``).
    score_mod: ``fn(score, batch, head, q_idx, kv_idx) -> score`` (FlexAttention's
      ``score_mod``), applied to the float32 logits after scale, soft-capping, bias and ALiBi
      and before the mask. Write it elementwise in ``jnp``: it is called on score blocks with
      int32 index arrays that broadcast against them (``batch [B,1,1,1]``, ``head [1,H,1,1]``,
      ``q_idx [1,1,n,1]``, ``kv_idx [1,1,1,m]`` on the dense and chunked paths); ``q_idx`` is
      the absolute position ``q_offset + i``. It may close over arrays (tables, per-head
      parameters, per-query values); they receive gradients. Softmax and sigmoid take it with
      implementations "xla" and "chunked" (O(T) memory).
    **kwargs: mechanism hyperparameters (e.g. ``sigmoid_bias``) or implementation options
      (e.g. ``block_q``).

  Returns:
    ``[batch, q_len, heads, v_dim]`` in q's dtype, or ``(out, weights)``.

  Raises:
    TypeError: a keyword no implementation of ``mechanism`` takes (``UnknownArgumentError``,
      also a ValueError), or a non-bool ``is_causal``.
    ValueError: bad shapes (of q/k/v, bias, head vectors, or a mask's arrays), a
      non-positive or non-finite ``scale`` / ``softcap``, a mask whose ``q_offset`` conflicts
      with the call's, or an implementation that does not support the call.
  """
  unbatched = all(jnp.ndim(x) == 3 for x in (q, k, v))
  if unbatched:
    q, k, v = q[None], k[None], v[None]
  b, tq, tk, h, _, _ = common.check_qkv(q, k, v)
  mask, bias = _array_mask(mask, bias, b, h, tq, tk)
  extra = []
  if query_seq_lengths is not None or key_value_seq_lengths is not None:
    extra.append(masks_lib.ValidLengthMask(kv_lengths=key_value_seq_lengths,
                                           q_lengths=query_seq_lengths))
  if local_window_size is not None:
    extra.append(masks_lib.SlidingWindowMask(*_window(local_window_size), q_offset=0))
  if extra:
    mask = masks_lib.combine(mask, *extra)
  if score_mod is not None:
    common.check_score_mod(score_mod)
    kwargs["score_mod"] = score_mod
  out = _attention(q, k, v, mechanism=mechanism, mask=mask, bias=bias, is_causal=is_causal,
                   scale=scale, implementation=implementation, softcap=softcap,
                   alibi_slopes=alibi_slopes, q_offset=q_offset, head_mask=head_mask,
                   return_weights=return_weights, **kwargs)
  if not unbatched:
    return out
  return (out[0][0], out[1][0]) if return_weights else out[0]


def _window(local_window_size: Any) -> tuple[int, int]:
  if isinstance(local_window_size, int) and not isinstance(local_window_size, bool):
    left = right = local_window_size
  elif (isinstance(local_window_size, (tuple, list)) and len(local_window_size) == 2
        and all(isinstance(w, int) and not isinstance(w, bool) for w in local_window_size)):
    left, right = local_window_size
  else:
    raise ValueError(f"local_window_size must be an int or a pair of ints (left, right), got "
                     f"{local_window_size!r}")
  if left < 0 or right < 0:
    raise ValueError(f"local_window_size must be >= 0, got {local_window_size!r}")
  return left, right


def _array_mask(mask: Any, bias: Any, b: int, h: int, tq: int, tk: int) -> tuple[Any, Any]:
  """A boolean array ``mask`` -> (an ``ArrayMask``, bias) or (None, bias with ``-inf``)."""
  if isinstance(mask, masks_lib.ArrayMask) and mask.per_head:
    mask = mask.array  # a per-head mask value: applied as a bias below
  elif mask is None or isinstance(mask, masks_lib.Mask):
    return mask, bias
  if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
    return mask, bias  # check_mask raises the TypeError
  m = jnp.asarray(mask)
  if m.dtype != jnp.bool_:
    raise TypeError(f"mask must be an attnlab.masks.Mask or a boolean array (True = attend), "
                    f"got dtype {m.dtype}; pass an additive mask as bias")
  if not 2 <= m.ndim <= 4:
    raise ValueError(f"a mask array must broadcast to [batch, heads, q_len, kv_len] = "
                     f"{(b, h, tq, tk)}, got shape {m.shape}")
  m = m.reshape((1,) * (4 - m.ndim) + m.shape)
  if any(s not in (1, t) for s, t in zip(m.shape, (b, h, tq, tk))):
    raise ValueError(f"a mask array must broadcast to [batch, heads, q_len, kv_len] = "
                     f"{(b, h, tq, tk)}, got shape {jnp.shape(mask)}")
  if m.shape[1] == 1:  # no head axis: a mask value (tiles can be skipped)
    return masks_lib.ArrayMask(jnp.broadcast_to(m[:, 0], (m.shape[0], tq, tk))), bias
  extra = jnp.where(m, 0.0, -jnp.inf).astype(jnp.float32)
  bias = common.check_bias(bias, b, h, tq, tk)
  return None, extra if bias is None else bias.astype(jnp.float32) + extra


def _attention(q, k, v, *, mechanism, mask, bias, is_causal, scale, implementation, softcap,
               alibi_slopes, q_offset, head_mask, return_weights, **kwargs):
  """``attention`` on batched q/k/v with a mask value."""
  b, tq, tk, _, _, _ = common.check_qkv(q, k, v)
  if not isinstance(is_causal, bool):
    raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
  _check_positive("scale", scale)
  _check_positive("softcap", softcap)
  mask = common.build_mask(masks_lib.bind_batch(common.check_mask(mask, b, tq, tk), b),
                           is_causal, q_offset)
  call = dict(q=q, k=k, v=v, mask=mask, bias=bias, scale=scale, softcap=softcap,
              alibi_slopes=alibi_slopes, q_offset=q_offset, head_mask=head_mask,
              return_weights=return_weights, **kwargs)
  check_keywords(mechanism, implementation, kwargs, call)
  name = choose_implementation(mechanism, implementation, **call)
  fn = registry.get_mechanism(mechanism).implementations[name].fn
  return fn(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
            alibi_slopes=alibi_slopes, q_offset=q_offset, head_mask=head_mask,
            return_weights=return_weights, **kwargs)


_load_plugins = load_plugins  # backwards-compatible private name
