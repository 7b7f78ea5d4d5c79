"""Pieces shared by the score-modifying mechanisms of this package.

Layout as ``attnlab.core.common``: q ``[B, Tq, H, D]``, k/v ``[B, Tk, K, D]`` (``H % K == 0``,
query head ``h`` reads kv head ``h // (H // K)``), logits ``[B, H, Tq, Tk]`` float32.
Query ``i`` sits at absolute position ``q_offset + i``; key ``j`` at position ``j``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import common
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array


def prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask):
  """Validation shared with the dense reference: ``(mask, bias, scale, alibi, head_mask)``."""
  return softmax_lib.prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask)


def positions(tq: int, tk: int, q_offset: Any) -> tuple[Array, Array]:
  """Absolute int32 positions of the queries ``[Tq]`` and keys ``[Tk]``."""
  q_pos = jnp.arange(tq, dtype=jnp.int32) + jnp.asarray(q_offset, jnp.int32)
  return q_pos, jnp.arange(tk, dtype=jnp.int32)


def group_heads(x: Array, kv_heads: int) -> Array:
  """``[B, T, H, D]`` -> ``[B, T, K, H // K, D]`` (query heads grouped by their kv head)."""
  b, t, h, d = x.shape
  return x.reshape(b, t, kv_heads, h // kv_heads, d)


def repeat_kv(x: Array, num_heads: int) -> Array:
  """``[B, T, K, D]`` -> ``[B, T, H, D]``: kv head ``h // (H // K)`` for query head ``h``."""
  return jnp.repeat(x, num_heads // x.shape[2], axis=2)


def head_param(x: Any, name: str, num_heads: int, trailing: tuple[int, ...] = ()) -> Array:
  """A per-head value: scalar, ``[H]`` or ``[H, *trailing]`` -> float32 broadcastable to
  ``[H, *trailing]``."""
  x = jnp.asarray(x, jnp.float32)
  ok = (x.ndim == 0 or x.shape == (num_heads,) or x.shape == (num_heads, *trailing)
        or (trailing and x.shape == (num_heads, 1)))
  if not ok:
    raise ValueError(f"{name} must be a scalar, [heads]={(num_heads,)} or "
                     f"{(num_heads, *trailing)}, got shape {x.shape}")
  if x.ndim == 0:
    x = jnp.broadcast_to(x, (num_heads,))
  if x.ndim == 1 and trailing:
    x = x.reshape(num_heads, *([1] * len(trailing)))
  return x


def finish_logits(raw: Array, *, scale: float, softcap: float | None, bias: Array | None,
                  alibi: Array | None, q_offset: Any) -> Array:
  """``cap(raw * scale) + bias + alibi`` in float32 (the order of ``common.dense_logits``)."""
  _, _, tq, tk = raw.shape
  s = common.apply_softcap(raw.astype(jnp.float32) * jnp.float32(scale), softcap)
  if bias is not None:
    s = s + bias.astype(jnp.float32)
  if alibi is not None:
    q_pos, k_pos = positions(tq, tk, q_offset)
    s = s + common.alibi_bias(alibi, q_pos, k_pos)
  return s


def qk_raw(q: Array, k: Array) -> Array:
  """Unscaled float32 ``q . k`` ``[B, H, Tq, Tk]`` (grouped over kv heads)."""
  return common.dense_logits(q, k, scale=1.0)


def relative_term(x: Array, table: Array, index: Array, kv_heads: int | None = None) -> Array:
  """``out[b, h, i, j] = x[b, i, h'] . table[index[i, j], h]`` as float32 ``[B, H, Ti, Tj]``.

  ``x`` is ``[B, Ti, H', D]`` with ``H' = H`` (query side) or ``H' = K`` kv heads (then query
  head ``h`` uses ``x``'s head ``h // (H // K)``); ``table`` is ``[R, H, D]`` (one row per
  relative bucket), ``index`` int ``[Ti, Tj]`` in ``[0, R)``. Computes ``x . table`` for all
  ``R`` buckets, then gathers: O(Ti R D + Ti Tj) instead of O(Ti Tj D).
  """
  r, h, d = table.shape
  if x.shape[2] == h:
    full = jnp.einsum("bihd,rhd->bhir", x, table, preferred_element_type=jnp.float32)
  else:
    kh = x.shape[2]
    tg = table.reshape(r, kh, h // kh, d)
    full = jnp.einsum("bikd,rkgd->bkgir", x, tg, preferred_element_type=jnp.float32)
    full = full.reshape(x.shape[0], h, x.shape[1], r)
  idx = jnp.broadcast_to(index[None, None], full.shape[:3] + (index.shape[1],))
  return jnp.take_along_axis(full, idx, axis=-1)


def softmax_output(logits: Array, v: Array, mask, head_mask: Array | None, dtype: Any,
                   return_weights: bool):
  """Masked softmax of ``logits`` times ``v``; head mask; cast; optional weights."""
  tq, tk = logits.shape[-2:]
  weights = softmax_lib.masked_softmax(logits, softmax_lib.dense_mask(mask, tq, tk))
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(dtype)
  return (out, weights) if return_weights else out


def safe_polar(x1: Array, x2: Array) -> tuple[Array, Array]:
  """``(r, theta)`` of ``x1 + i x2`` with finite gradients at 0 (theta := 0 there)."""
  r2 = x1 * x1 + x2 * x2
  nz = r2 > 0
  r = jnp.where(nz, jnp.sqrt(jnp.where(nz, r2, 1.0)), 0.0)
  theta = jnp.arctan2(jnp.where(nz, x2, 0.0), jnp.where(nz, x1, 1.0))
  return r, theta
