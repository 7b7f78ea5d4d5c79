"""RCMHA scores: Transformer-XL relative-position terms on (convolved) q/k/v.

Paper: "RCMHA: Relative Convolutional Multi-Head Attention for Natural Language Modelling"
(Sugiharto, Aradea, Mubarok; arXiv 2308.03429). RCMHA = depth-wise convolution of the Q/K/V
projections (done by ``attnlab.nn.mechanisms.rcmha.RCMHAttention``) + relative positional
scores "as in Transformer-XL" (Dai et al., arXiv 1901.02860, Sec. 3.3), which this
function computes::

    A_ij = (q_i + u) . k_j  +  (q_i + w) . r[c(i - j)]
    w_ij = softmax_j(A_ij * scale + bias_ij),   out_i = sum_j w_ij v_j

``r`` ``[2m + 1, H, D]`` is the projected relative table ``W_r R`` (R sinusoidal in
Transformer-XL), indexed by ``c(i - j) = clip(i - j, -m, m) + m`` with ``m`` = ``max_distance``;
``u``, ``w`` ``[H, D]`` are the global content / position biases. Departure: distances beyond
``m`` share the edge row (Transformer-XL does not clip; use ``m >= max_len`` for no clipping).
Query ``i`` sits at ``q_offset + i``. With ``r``, ``u``, ``w`` omitted: softmax attention.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def relative_distance_index(q_pos: Array, k_pos: Array, max_distance: int) -> Array:
  """``clip(q_pos_i - k_pos_j, -m, m) + m`` int32 ``[len(q), len(k)]`` in ``[0, 2m]``."""
  rel = q_pos[:, None].astype(jnp.int32) - k_pos[None, :].astype(jnp.int32)
  return jnp.clip(rel, -max_distance, max_distance) + max_distance


def _prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask, r, u, w, max_distance):
  """Checks shared by both implementations; ``(mask, bias, scale, alibi, head_mask)``."""
  if not isinstance(max_distance, int) or max_distance <= 0:
    raise ValueError(f"max_distance must be a positive int, got {max_distance!r}")
  out = _scores.prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask)
  h, d = q.shape[2:]
  for name, t in (("u", u), ("w", w)):
    if t is not None and t.shape != (h, d):
      raise ValueError(f"{name} must have shape [heads, head_dim]={(h, d)}, got {t.shape}")
  if r is not None and r.shape != (2 * max_distance + 1, h, d):
    raise ValueError(f"r must have shape [2 * max_distance + 1, heads, head_dim]="
                     f"{(2 * max_distance + 1, h, d)}, got {r.shape}")
  return out


def _shift(q: Array, u: Array | None) -> Array:
  """``q + u`` (``u [H, D]`` broadcast over batch and positions) in q's dtype."""
  return q if u is None else (q.astype(jnp.float32) + u.astype(jnp.float32)).astype(q.dtype)


def rcmha_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                    scale: float | None = None, softcap: float | None = None,
                    alibi_slopes: Array | None = None, q_offset: Any = 0,
                    head_mask: Array | None = None, return_weights: bool = False,
                    r: Array | None = None, u: Array | None = None, w: Array | None = None,
                    max_distance: int = 64):
  """Relative (Transformer-XL) attention; q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]``.

  ``r``: ``[2 * max_distance + 1, H, D]``; ``u``, ``w``: ``[H, D]`` (each optional).
  """
  mask, bias, scale, alibi, head_mask = _prepare(q, k, v, mask, bias, scale, alibi_slopes,
                                                 head_mask, r, u, w, max_distance)
  tq, tk = q.shape[1], k.shape[1]
  qc = _shift(q, u)
  raw = common.dense_logits(qc, k, scale=1.0)
  if r is not None:
    qp = _shift(q, w)
    q_pos, k_pos = _scores.positions(tq, tk, q_offset)
    raw = raw + _scores.relative_term(qp, r, relative_distance_index(q_pos, k_pos,
                                                                     max_distance))
  logits = _scores.finish_logits(raw, scale=scale, softcap=softcap, bias=bias, alibi=alibi,
                                 q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


def rcmha_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
               v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
               scale: float | None = None, softcap: float | None = None,
               alibi_slopes: Array | None = None, q_offset: Any = 0,
               head_mask: Array | None = None, return_weights: bool = False,
               r: Array | None = None, u: Array | None = None, w: Array | None = None,
               max_distance: int = 64, implementation: str = "chunked", **opts: Any):
  """``rcmha_attention`` in O(T m) memory ("chunked" or "pallas", ``opts``: their options):
  attention of ``q + u`` on k, plus a
  score_mod gathering ``pos[b, h, i, c(i - j)]`` from ``pos = (q + w) . r`` ``[B, H, Tq, 2m+1]``
  (every distance bucket scored once)."""
  kw = dict(mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes,
            q_offset=q_offset, r=r, u=u, w=w, max_distance=max_distance)
  mask, bias, scale, alibi, head_mask_ = _prepare(q, k, v, mask, bias, scale, alibi_slopes,
                                                  head_mask, r, u, w, max_distance)
  pos = None if r is None else _scores.relative_scores(_shift(q, w), r)
  off = jnp.asarray(q_offset, jnp.int32)

  def raw_mod(s, b, h, qi, ki):
    if pos is None:
      return s
    c = jnp.clip(qi - ki, -max_distance, max_distance) + max_distance
    return s + scale * pos[b, h, qi - off, c]

  out = _scores.flex_attention(_shift(q, u), k, v, raw_mod=raw_mod, additive=True, mask=mask,
                               bias=bias, scale=scale, softcap=softcap, alibi=alibi,
                               q_offset=q_offset, head_mask=head_mask_,
                               implementation=implementation, **opts)
  return _scores.with_weights(out, rcmha_attention, q, k, v, return_weights, **kw)


registry.register_mechanism(
    'rcmha', kind='module',
    paper='RCMHA: Relative Convolutional Multi-Head Attention for Natural Language '
          'Modelling (arXiv 2308.03429)',
    description='causal depth-wise conv on q/k/v, then softmax((q_i+u).k_j + (q_i+w).r[i-j]) v '
                '(Transformer-XL relative terms)',
    complexity='O(T^2 d + T m d + T c d) time, O(T m) memory (chunked; m = max_distance, '
               'c = kernel_size)',
    implementations={"xla": rcmha_attention})
_scores.register_memory_efficient(
    "rcmha", rcmha_flex, ("r", "u", "w", "max_distance"),
    example=lambda rng, h, d, t: dict(r=_scores.normal(rng, 65, h, d), u=_scores.normal(rng, h, d),
                                      w=_scores.normal(rng, h, d), max_distance=32))
