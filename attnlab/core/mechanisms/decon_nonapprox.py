"""Deconstructing Attention -- "Non-approximate": element-wise self-gated scores.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (Xue, Moosavi & Aletras, arXiv 2510.11602), Eq. 7-8: no pairwise similarity; each key
position scores itself, ``s_j = (SiLU(q_j) * k_j) . 1 / sqrt(d)``, and ``A_ij = softmax_{j <=
i}(s_j)``: the weights of query ``i`` do not depend on ``q_i``; a later query only renormalises
the same scores over more keys. A plain ``attnlab.nn.MultiHeadAttention(mechanism=...)`` runs
it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry
from attnlab.core.mechanisms import _scores
from attnlab.core.mechanisms import softmax as softmax_lib
from attnlab.core.mechanisms._mixers import f32

Array = jax.Array

Q_ACTIVATIONS = ("silu", "none")


def _check(q, k, q_offset, q_activation):
  if q_activation not in Q_ACTIVATIONS:
    raise ValueError(f"q_activation must be one of {list(Q_ACTIVATIONS)}, got "
                     f"{q_activation!r}")
  if q.shape[1] != k.shape[1] or not (isinstance(q_offset, int) and q_offset == 0):
    raise ValueError("self-gated (non-approximate) attention scores each key with the query "
                     "at the same position, so it needs q_len == kv_len and q_offset == 0 "
                     f"(got q {q.shape}, k {k.shape}, q_offset {q_offset!r}); KV-cache "
                     "decoding is not supported")


def _key_scores(q, k, scale, q_activation):
  """``s_j = act(q_j) . k_j * scale`` float32 ``[B, H, T]``."""
  h = q.shape[2]
  kr = jnp.repeat(f32(k), h // k.shape[2], axis=2)
  qa = jax.nn.silu(f32(q)) if q_activation == "silu" else f32(q)
  return jnp.einsum("bthd,bthd->bht", qa, kr) * jnp.float32(scale)


def self_gated_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                         v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                         bias: Array | None = None, scale: float | None = None,
                         softcap: float | None = None, alibi_slopes: Array | None = None,
                         q_offset: Any = 0, head_mask: Array | None = None,
                         return_weights: bool = False, q_activation: str = "silu"):
  """"Non-approximate" attention (Eq. 7-8): per-key self-gated scores, softmax over time.

  ``s_j = sum_d act(q_j)_d k_jd * scale`` (``act`` = SiLU as the paper, or "none"); the logits
  of query ``i`` for key ``j`` are ``s_j`` (then soft-capping, bias and ALiBi as usual), so
  ``A_ij = exp(s_j) / sum_{visible j'} exp(s_j')``. GQA: query head ``h`` gates kv head
  ``h // (H // K)``.

  Needs the queries of every key position (``q_len == kv_len``, ``q_offset == 0``): a KV-cache
  decode step, which only has the new queries, raises ``ValueError``.

  Departure: the paper applies SiLU inside the projection, ``Q = SiLU(H W_Q)``, before any
  rotary embedding, so RoPE cancels in ``q_j . k_j`` (same angle); here the activation is
  applied to the ``q`` handed in, i.e. after RoPE when the model uses it. The catalogue config
  therefore sets ``model.position = "none"``, which gives the paper's (RoPE-cancelled) scores.
  """
  _check(q, k, q_offset, q_activation)
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  b, t, h, _ = q.shape
  s = _key_scores(q, k, scale, q_activation)  # [B, H, Tk]
  logits = jnp.broadcast_to(s[:, :, None, :], (b, h, t, t))
  logits = common.apply_softcap(logits, softcap)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if alibi is not None:
    pos = jnp.arange(t)
    logits = logits + common.alibi_bias(alibi, pos, pos)
  weights = softmax_lib.masked_softmax(logits, softmax_lib.dense_mask(mask, t, t))
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


def self_gated_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                    bias: Array | None = None, scale: float | None = None,
                    softcap: float | None = None, alibi_slopes: Array | None = None,
                    q_offset: Any = 0, head_mask: Array | None = None,
                    return_weights: bool = False, q_activation: str = "silu",
                    implementation: str = "chunked", **opts: Any):
  """``self_gated_attention`` in O(T) memory: the per-key scores ``s [B, H, T]`` are computed
  once; a call ("chunked" or "pallas") on zero q, k of a small head dim (its ``q.k`` is 0,
  then bias and ALiBi) adds ``cap(s[b, h, j])`` with a score_mod."""
  _check(q, k, q_offset, q_activation)
  mask, bias, scale, alibi, head_mask_ = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                             alibi_slopes, head_mask)
  s_key = _key_scores(q, k, scale, q_activation)  # [B, H, T]
  mod = lambda s, bi, hi, qi, ki: s + common.apply_softcap(s_key[bi, hi, ki], softcap)
  zq, zk = _scores.zeros_qk(q, k, implementation)
  out = _scores.attend(implementation)(
      zq, zk, v, mask=mask, bias=bias, scale=1.0, alibi_slopes=alibi, head_mask=head_mask_,
      score_mod=mod, **opts).astype(q.dtype)
  if not return_weights:
    return out
  return out, self_gated_attention(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                                   alibi_slopes=alibi_slopes, return_weights=True,
                                   q_activation=q_activation)[1]


registry.register_mechanism(
    'decon_nonapprox', kind='attention',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602) -- Non-approximate (element-wise self-gating)',
    description='A_ij = softmax_{j<=i}(sum_d SiLU(q_j) k_j / sqrt(d)): per-key self scores, no '
                'pairwise similarity',
    complexity='O(T^2 + T d) time, O(T d) memory (chunked); linear-time recurrent form exists',
    implementations={"xla": self_gated_attention})
_scores.register_memory_efficient("decon_nonapprox", self_gated_flex, ("q_activation",))
