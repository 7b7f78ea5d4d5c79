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
  if not isinstance(max_distance, int) or max_distance <= 0:
    raise ValueError(f"max_distance must be a positive int, got {max_distance!r}")
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  tq, h, d = q.shape[1:]
  tk = k.shape[1]
  for name, t in (("u", u), ("w", w)):
    if t is not None and t.shape != (h, d):
      raise ValueError(f"{name} must have shape [heads, head_dim]={(h, d)}, got {t.shape}")
  if r is not None and r.shape != (2 * max_distance + 1, h, d):
    raise ValueError(f"r must have shape [2 * max_distance + 1, heads, head_dim]="
                     f"{(2 * max_distance + 1, h, d)}, got {r.shape}")
  qc = q if u is None else (q.astype(jnp.float32) + u.astype(jnp.float32)).astype(q.dtype)
  raw = common.dense_logits(qc, k, scale=1.0)
  if r is not None:
    qp = q if w is None else (q.astype(jnp.float32) + w.astype(jnp.float32)).astype(q.dtype)
    q_pos, k_pos = _scores.positions(tq, tk, q_offset)
    raw = raw + _scores.relative_term(qp, r, relative_distance_index(q_pos, k_pos,
                                                                     max_distance))
  logits = _scores.finish_logits(raw, scale=scale, softcap=softcap, bias=bias, alibi=alibi,
                                 q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


registry.register_mechanism(
    'rcmha', kind='module',
    paper='RCMHA: Relative Convolutional Multi-Head Attention for Natural Language '
          'Modelling (arXiv 2308.03429)',
    description='causal depth-wise conv on q/k/v, then softmax((q_i+u).k_j + (q_i+w).r[i-j]) v '
                '(Transformer-XL relative terms)',
    complexity='O(T^2 d + T m d + T c d) time, O(T^2 + T m) memory (m = max_distance, c = '
               'kernel_size)',
    implementations={"xla": rcmha_attention})
