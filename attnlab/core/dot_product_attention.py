"""``dot_product_attention``: a drop-in for ``jax.nn.dot_product_attention``.

Same signature and meaning as ``jax.nn.dot_product_attention`` (JAX 0.10), so swapping one
import is enough, plus ``mechanism=`` (any mechanism with a pure function, e.g. "sigmoid") and
attnlab's implementations (``implementation="auto" | "xla" | "chunked" | "pallas"``; jax.nn's
``None`` means "auto", and ``"cudnn"`` calls jax.nn's cuDNN kernel). It checks jax.nn's
argument layout (4-d ``mask`` / ``bias``, 3-d when unbatched) and hands the call to
``attnlab.attention``, which turns the arguments into attnlab values: a ``mask`` without a
head axis -> ``masks.ArrayMask`` (tile skipping works), a per-head mask -> an additive ``-inf``
bias; ``query_seq_lengths`` / ``key_value_seq_lengths`` -> ``masks.ValidLengthMask``;
``local_window_size`` -> ``masks.SlidingWindowMask``; ``is_causal`` -> query ``i`` sees keys
``<= i`` (top-left aligned, as jax.nn).

Departure from jax.nn: a query row with no visible key (fully masked) returns zeros, as every
attnlab implementation does; jax.nn returns the mean of the values over all keys for such
rows (padded queries of ``query_seq_lengths`` give zeros in both).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float

from attnlab.core import api

Array = jax.Array


def _to_4d(x: Any, name: str, unbatched: bool) -> Array:
  """A bias or mask broadcastable to ``[B, N, T, S]`` (``[N, T, S]`` when unbatched)."""
  x = jnp.asarray(x)
  want = 3 if unbatched else 4
  if x.ndim != want:
    layout = "[N, T, S]" if unbatched else "[B, N, T, S]"
    raise ValueError(f"{name} must be {want}-d and broadcastable to {layout} (as "
                     f"jax.nn.dot_product_attention), got shape {x.shape}")
  return x[None] if unbatched else x


def dot_product_attention(
    query: Float[ArrayLike, "*B T N H"], key: Float[ArrayLike, "*B S K H"],
    value: Float[ArrayLike, "*B S K Hv"], bias: Float[ArrayLike, "*#B #N #T #S"] | None = None,
    mask: ArrayLike | None = None, *, scale: float | None = None, is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None, key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: str | None = None, return_residual: bool = False,
    mechanism: str = "softmax", **hyperparameters: Any,
) -> Float[Array, "*B T N Hv"]:
  """``jax.nn.dot_product_attention`` with attnlab's mechanisms and implementations.

  Args:
    query: ``[B, T, N, H]`` or unbatched ``[T, N, H]``.
    key, value: ``[B, S, K, H]`` (``[S, K, H]``); ``N % K == 0`` (MHA / GQA / MQA).
    bias: additive logits bias, 4-d broadcastable to ``[B, N, T, S]`` (3-d ``[N, T, S]`` when
      unbatched).
    mask: boolean, True = attend; 4-d broadcastable to ``[B, N, T, S]`` (3-d when unbatched).
    scale: logit scale, default ``1/sqrt(H)``.
    is_causal: query ``i`` sees keys ``<= i``.
    query_seq_lengths, key_value_seq_lengths: int ``[B]``: real tokens per example.
    local_window_size: ``(left, right)`` or a symmetric int: query ``i`` sees keys
      ``i - left .. i + right``.
    implementation: None / "auto", "xla", "chunked", "pallas", or "cudnn" (jax.nn's kernel).
    return_residual: also return the logsumexp ``[B, T, N]`` (softmax only; computed by
      jax.nn's XLA path).
    mechanism: an attnlab mechanism with a pure function (``attnlab.list_mechanisms()``).
    **hyperparameters: the mechanism's (e.g. ``sigmoid_bias``).

  Returns:
    ``[B, T, N, Hv]`` (``[T, N, Hv]`` when unbatched) in query's dtype.
  """
  if implementation == "cudnn" or return_residual:
    if mechanism != "softmax" or hyperparameters:
      raise ValueError("implementation='cudnn' and return_residual=True run "
                       "jax.nn.dot_product_attention: softmax only, no hyperparameters; got "
                       f"mechanism={mechanism!r}, {sorted(hyperparameters)}")
    return jax.nn.dot_product_attention(
        query, key, value, bias, mask, scale=scale, is_causal=is_causal,
        query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        implementation="cudnn" if implementation == "cudnn" else None,
        return_residual=return_residual)
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  if query.ndim not in (3, 4) or key.ndim != query.ndim or value.ndim != query.ndim:
    raise ValueError(f"query, key, value must all be [B, T, N, H] or all [T, N, H], got "
                     f"{query.shape}, {key.shape}, {value.shape}")
  unbatched = query.ndim == 3
  if unbatched:
    query, key, value = query[None], key[None], value[None]
  if bias is not None:
    bias = _to_4d(bias, "bias", unbatched)
  if mask is not None:
    mask = _to_4d(mask, "mask", unbatched)
    if mask.dtype != jnp.bool_:
      raise TypeError(f"mask must be boolean (True = attend), got dtype {mask.dtype}; pass an "
                      "additive mask as bias")
  out = api.attention(query, key, value, mechanism=mechanism, mask=mask, bias=bias,
                      is_causal=is_causal, scale=scale,
                      implementation="auto" if implementation is None else implementation,
                      query_seq_lengths=query_seq_lengths,
                      key_value_seq_lengths=key_value_seq_lengths,
                      local_window_size=local_window_size, **hyperparameters)
  return out[0] if unbatched else out
