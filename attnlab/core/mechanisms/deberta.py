"""DeBERTa disentangled attention (content-to-content + content-to-position +
position-to-content).

Paper: "DeBERTa: Decoding-enhanced BERT with Disentangled Attention" (He, Liu, Gao, Chen;
arXiv 2006.03654), the attention with relative positions::

    A_ij = q_i . k_j  +  q_i . k_r[d(i, j)]  +  k_j . q_r[d(j, i)]
    w_ij = softmax_j(A_ij / sqrt(3 D) + bias_ij),   out_i = sum_j w_ij v_j

with the clipped relative distance ``d(i, j) = clip(i - j + m, 0, 2m - 1)``, ``m`` =
``max_distance`` (the paper's k). ``q_r``/``k_r`` ``[2m, H, D]`` are the relative position
embeddings already projected per head (``P W_{q,r}``, ``P W_{k,r}``). Query ``i`` sits at
``q_offset + i`` (KV-cache decoding). Masks (causal included) apply to the summed scores, so
the decoder use is the paper's scores under a causal mask.

Options: ``log_buckets=True`` maps distances through DeBERTa-v2's log buckets (bucket size
``m``: exact for ``|i - j| <= m / 2``, logarithmic up to ``max_position - 1`` -> ``m - 1``)
before the shift and clip, as DeBERTa-v2/v3 do. With ``q_r`` or
``k_r`` omitted the corresponding term is dropped and the scale becomes ``1/sqrt(n D)``, ``n``
the number of terms (``n = 1``: softmax attention).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def log_bucket(rel: Array, bucket_size: int, max_position: int) -> Array:
  """DeBERTa-v2 ``make_log_bucket_position``: identity for ``|rel| <= bucket_size // 2``,
  then ``sign(rel) * (mid + ceil(log(|rel| / mid) / log((max_position - 1) / mid) *
  (mid - 1)))``."""
  mid = bucket_size // 2
  sign = jnp.sign(rel)
  abs_pos = jnp.where((rel < mid) & (rel > -mid), mid - 1, jnp.abs(rel)).astype(jnp.float32)
  log_pos = jnp.ceil(jnp.log(abs_pos / mid) / math.log((max_position - 1) / mid)
                     * (mid - 1)) + mid
  return jnp.where(abs_pos <= mid, rel, (log_pos * sign).astype(rel.dtype))


def check_buckets(max_distance: Any, log_buckets: bool, max_position: int) -> None:
  if not isinstance(max_distance, int) or max_distance <= 0:
    raise ValueError(f"max_distance must be a positive int, got {max_distance!r}")
  if log_buckets and (max_distance < 2 or max_position - 1 <= max_distance // 2):
    raise ValueError(f"log_buckets needs max_distance >= 2 and max_position > "
                     f"max_distance // 2 + 1, got {max_distance}, {max_position}")


def bucket_index(rel: Array, max_distance: int, *, log_buckets: bool = False,
                 max_position: int = 512) -> Array:
  """Elementwise ``clip(bucket(rel) + m, 0, 2m - 1)`` for int relative distances ``rel``."""
  rel = rel.astype(jnp.int32)
  if log_buckets:
    rel = log_bucket(rel, max_distance, max_position)
  return jnp.clip(rel + max_distance, 0, 2 * max_distance - 1)


def relative_index(q_pos: Array, k_pos: Array, max_distance: int, *, log_buckets: bool = False,
                   max_position: int = 512) -> Array:
  """``d(i, j) = clip(bucket(q_pos_i - k_pos_j) + m, 0, 2m - 1)`` int32 ``[len(q), len(k)]``."""
  check_buckets(max_distance, log_buckets, max_position)
  rel = q_pos[:, None].astype(jnp.int32) - k_pos[None, :].astype(jnp.int32)
  return bucket_index(rel, max_distance, log_buckets=log_buckets, max_position=max_position)


def _prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask, q_r, k_r, max_distance,
             log_buckets, max_position):
  """Checks shared by both implementations; ``(mask, bias, scale, alibi, head_mask)``."""
  check_buckets(max_distance, log_buckets, max_position)
  h, d = q.shape[2], q.shape[3]
  n_terms = 1 + (q_r is not None) + (k_r is not None)
  scale = 1.0 / math.sqrt(n_terms * d) if scale is None else scale
  out = _scores.prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask)
  for name, t in (("q_r", q_r), ("k_r", k_r)):
    if t is not None and t.shape != (2 * max_distance, h, d):
      raise ValueError(f"{name} must have shape [2 * max_distance, heads, head_dim]="
                       f"{(2 * max_distance, h, d)}, got {t.shape}")
  return out


def deberta_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                      v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                      scale: float | None = None, softcap: float | None = None,
                      alibi_slopes: Array | None = None, q_offset: Any = 0,
                      head_mask: Array | None = None, return_weights: bool = False,
                      q_r: Array | None = None, k_r: Array | None = None,
                      max_distance: int = 16, log_buckets: bool = False,
                      max_position: int = 512):
  """Disentangled attention; q ``[B,Tq,H,D]`` (content), k/v ``[B,Tk,K,D]``.

  ``q_r``, ``k_r``: ``[2 * max_distance, H, D]`` projected relative embeddings (either may be
  None). ``scale`` defaults to ``1/sqrt(n_terms * D)``.
  """
  mask, bias, scale, alibi, head_mask = _prepare(q, k, v, mask, bias, scale, alibi_slopes,
                                                 head_mask, q_r, k_r, max_distance,
                                                 log_buckets, max_position)
  tq, tk = q.shape[1], k.shape[1]
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  raw = _scores.qk_raw(q, k)
  if k_r is not None:  # content-to-position: q_i . k_r[d(i, j)]
    idx = relative_index(q_pos, k_pos, max_distance, log_buckets=log_buckets,
                         max_position=max_position)
    raw = raw + _scores.relative_term(q, k_r, idx)
  if q_r is not None:  # position-to-content: k_j . q_r[d(j, i)]
    idx = relative_index(k_pos, q_pos, max_distance, log_buckets=log_buckets,
                         max_position=max_position)  # [Tk, Tq]
    raw = raw + jnp.swapaxes(_scores.relative_term(k, q_r, idx), -1, -2)
  logits = _scores.finish_logits(raw, scale=scale, softcap=softcap, bias=bias, alibi=alibi,
                                 q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


def deberta_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                 v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                 scale: float | None = None, softcap: float | None = None,
                 alibi_slopes: Array | None = None, q_offset: Any = 0,
                 head_mask: Array | None = None, return_weights: bool = False,
                 q_r: Array | None = None, k_r: Array | None = None, max_distance: int = 16,
                 log_buckets: bool = False, max_position: int = 512,
                 implementation: str = "chunked", **opts: Any):
  """``deberta_attention`` in O(T m) memory: a score_mod on the "chunked" path or in the
  "pallas" kernels (``opts``: their options).

  The position terms' every bucket is scored once, ``c2p[b, h, i, r] = q_i . k_r[r]``
  ``[B, H, Tq, 2m]`` and ``p2c[b, h, j, r] = k_j . q_r[r]`` ``[B, H, Tk, 2m]``; the score_mod
  gathers ``c2p[b, h, i, d(i, j)] + p2c[b, h, j, d(j, i)]`` per tile (gradients flow back into
  both tables, hence into q, k, q_r, k_r).
  """
  kw = dict(mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes,
            q_offset=q_offset, q_r=q_r, k_r=k_r, max_distance=max_distance,
            log_buckets=log_buckets, max_position=max_position)
  mask, bias, scale, alibi, head_mask_ = _prepare(q, k, v, mask, bias, scale, alibi_slopes,
                                                  head_mask, q_r, k_r, max_distance,
                                                  log_buckets, max_position)
  c2p = None if k_r is None else _scores.relative_scores(q, k_r)  # [B, H, Tq, 2m]
  p2c = None if q_r is None else _scores.relative_scores(k, q_r)  # [B, H, Tk, 2m]
  off = jnp.asarray(q_offset, jnp.int32)
  bucket = lambda rel: bucket_index(rel, max_distance, log_buckets=log_buckets,
                                    max_position=max_position)

  def raw_mod(s, b, h, qi, ki):
    if c2p is not None:
      s = s + scale * c2p[b, h, qi - off, bucket(qi - ki)]
    if p2c is not None:
      s = s + scale * p2c[b, h, ki, bucket(ki - qi)]
    return s

  out = _scores.flex_attention(q, k, v, raw_mod=raw_mod, additive=True, mask=mask, bias=bias,
                               scale=scale, softcap=softcap, alibi=alibi, q_offset=q_offset,
                               head_mask=head_mask_, implementation=implementation, **opts)
  return _scores.with_weights(out, deberta_attention, q, k, v, return_weights, **kw)


registry.register_mechanism(
    'deberta', kind='module',
    paper='DeBERTa: Decoding-enhanced BERT with Disentangled Attention (arXiv 2006.03654)',
    description='softmax((q_i.k_j + q_i.k_r[d(i,j)] + k_j.q_r[d(j,i)]) / sqrt(3d)) v, d = clipped '
                'relative distance',
    complexity='O(T^2 d + T m d) time, O(T m) memory (chunked; m = max_distance)',
    implementations={"xla": deberta_attention})
_scores.register_memory_efficient(
    "deberta", deberta_flex, ("q_r", "k_r", "max_distance", "log_buckets", "max_position"),
    example=lambda rng, h, d, t: dict(q_r=_scores.normal(rng, 32, h, d),
                                      k_r=_scores.normal(rng, 32, h, d), max_distance=16))
