"""``attention(...)``: one entry point that dispatches by mechanism and implementation."""

from __future__ import annotations

import importlib
from typing import Any

import jax
from jaxtyping import ArrayLike, Float

from attnlab.core import common
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


def attention(
    q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"], v: Float[Array, "B Tk K Dv"], *,
    mechanism: str = "softmax", mask: Any = None,
    bias: Float[ArrayLike, "#B #H #Tq #Tk"] | None = None, is_causal: bool = False,
    scale: float | None = None, implementation: str = "auto", softcap: float | None = None,
    alibi_slopes: Float[ArrayLike, "H"] | Float[ArrayLike, "#B H"] | None = None,
    q_offset: Any = 0, head_mask: Float[ArrayLike, "H"] | Float[ArrayLike, "#B H"] | None = None,
    return_weights: bool = False, **kwargs: Any,
) -> Float[Array, "B Tq H Dv"] | tuple[Float[Array, "B Tq H Dv"], Float[Array, "B H Tq Tk"]]:
  """Attention with a chosen mechanism and implementation.

  Args:
    q: ``[batch, q_len, heads, head_dim]``.
    k: ``[batch, kv_len, kv_heads, head_dim]``; ``heads % kv_heads == 0`` (MHA/GQA/MQA).
    v: ``[batch, kv_len, kv_heads, v_dim]``.
    mechanism: a name from ``list_mechanisms()``.
    mask: an ``attnlab.masks.Mask`` value (causal, window, segments, prefix-LM, lengths, ...).
    bias: additive logits bias broadcastable to ``[batch, heads, q_len, kv_len]``.
    is_causal: AND a causal mask (query i sees keys ``<= i + q_offset``).
    scale: logit scale, default ``1/sqrt(head_dim)``.
    implementation: "auto", "xla" (dense reference), "chunked", "pallas", ...
    softcap: logit soft-capping ``c * tanh(x / c)`` applied before bias/ALiBi.
    alibi_slopes: ``[heads]`` or ``[batch, heads]``; adds ``-slope * |i - j|``.
    q_offset: absolute position of query 0 (decoding with a KV cache).
    head_mask: ``[heads]`` or ``[batch, heads]`` multiplier of each head's output (ablations).
    return_weights: also return the attention weights ``[batch, heads, q_len, kv_len]``
      (recomputed densely when a fused implementation ran).
    **kwargs: mechanism hyperparameters (e.g. ``sigmoid_bias``) or implementation options
      (e.g. ``block_q``).

  Returns:
    ``[batch, q_len, heads, v_dim]`` in q's dtype, or ``(out, weights)``.
  """
  common.check_qkv(q, k, v)
  if not isinstance(is_causal, bool):
    raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
  mask = common.build_mask(common.check_mask(mask, q.shape[0]), is_causal, q_offset)
  call = dict(q=q, k=k, v=v, mask=mask, bias=bias, scale=scale, softcap=softcap,
              alibi_slopes=alibi_slopes, q_offset=q_offset, head_mask=head_mask,
              return_weights=return_weights, **kwargs)
  name = choose_implementation(mechanism, implementation, **call)
  fn = registry.get_mechanism(mechanism).implementations[name].fn
  return fn(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
            alibi_slopes=alibi_slopes, q_offset=q_offset, head_mask=head_mask,
            return_weights=return_weights, **kwargs)


_load_plugins = load_plugins  # backwards-compatible private name
