"""The attention ablations of "Deconstructing Attention: Investigating Design Principles for
Effective Language Modeling" (Xue, Moosavi & Aletras, arXiv 2510.11602) as pure functions.

The paper relaxes four principles of dot-product attention ``softmax(Q K^T / sqrt(d)) V``
(its Eq. 1-3); the variants kept here, with the names used in this catalogue:

* token mixing -- "MLP" (``mixer_none``, :func:`gated_mlp`): attention is replaced by a
  gated MLP, ``O = FC_dn(SiLU(FC_gt(H)) * FC_up(H))`` (Eq. 4-5), sized to match the
  attention's parameter count; each token only sees itself.
* mathematical form -- "Approximate" (``decon_approx``, :func:`taylor_attention`): softmax
  replaced by its second-order Taylor expansion (Eq. 6, after Based, arXiv 2402.18668),
  ``A_ij = f(s_ij) / sum_j' f(s_ij')``, ``f(s) = 1 + s + s^2 / 2``, ``s = q_i.k_j / sqrt(d)``.
  ``f > 0`` everywhere (its minimum is 1/2), so the weights are a proper distribution.
* mathematical form -- "Non-approximate" (``decon_nonapprox``,
  :func:`self_gated_attention`): no pairwise similarity; each key position scores itself,
  ``s_j = (SiLU(q_j) * k_j) . 1 / sqrt(d)``, and ``A_ij = softmax_{j <= i}(s_j)`` (Eq. 7-8):
  the weights of query ``i`` do not depend on ``q_i``; a later query only renormalises the
  same scores over more keys.
* sequence dependency -- "RndEmbQK" (``mixer_fixed``): Q, K from fixed random embeddings
  (Eq. 9-10); softmax attention over them is a fixed, input-independent mixing matrix. It
  ends in ``attnlab.core.softmax_attention`` (see ``attnlab.nn.mechanisms_mixers``).
* current Q/K -- "StaticEmbQK" (``decon_staticqk``): Q, K from the static input embeddings,
  V from the current hidden state (Eq. 13); also ends in ``softmax_attention``.

Not implemented: "FixedSeqQK" (needs a fixed natural-text sequence run through the stack).
Per-layer interleaving with standard attention (the paper's hybrid models) is a per-layer
mechanism choice made elsewhere. Departures are listed on each function.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import softmax as softmax_lib
from attnlab.core.mechanisms_mixers._common import f32

Array = jax.Array

Q_ACTIVATIONS = ("silu", "none")


def gated_mlp(x: Array, w_gate: Array, w_up: Array, w_down: Array) -> Array:
  """``(SiLU(x W_gate) * (x W_up)) W_down``: ``x [..., E]``, ``w_gate/w_up [E, M]``,
  ``w_down [M, E]`` -> ``[..., E]`` in x's dtype (Eq. 4-5; no token mixing)."""
  xf = f32(x)
  h = jax.nn.silu(xf @ f32(w_gate)) * (xf @ f32(w_up))
  return (h @ f32(w_down)).astype(x.dtype)


def taylor_attention(q: Array, k: Array, v: Array, *, mask: masks_lib.Mask | None = None,
                     bias: Array | None = None, scale: float | None = None,
                     softcap: float | None = None, alibi_slopes: Array | None = None,
                     q_offset: Any = 0, head_mask: Array | None = None,
                     return_weights: bool = False):
  """"Approximate" attention: second-order Taylor softmax (Eq. 6), dense reference.

  ``s`` are the usual logits (scale, soft-capping, bias and ALiBi as ``softmax_attention``);
  ``A = f(s) / sum_visible f(s)``, ``f(s) = 1 + s + s^2/2``; masked keys get 0 and a row with
  no visible key returns zeros.

  Departure: the paper (after Based) evaluates this in its linear-time recurrent feature-map
  form; this is the equal O(T^2) dense form (identical weights), the reference to test a
  linear-time implementation against.
  """
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  s = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                          q_offset=q_offset)
  f = 1.0 + s + 0.5 * s * s
  allowed = softmax_lib.dense_mask(mask, q.shape[1], k.shape[1])
  if allowed is not None:
    f = jnp.where(allowed, f, 0.0)
  denom = jnp.sum(f, axis=-1, keepdims=True)
  weights = f / jnp.where(denom == 0.0, 1.0, denom)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


def self_gated_attention(q: Array, k: Array, v: Array, *, mask: masks_lib.Mask | None = None,
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
  if q_activation not in Q_ACTIVATIONS:
    raise ValueError(f"q_activation must be one of {list(Q_ACTIVATIONS)}, got "
                     f"{q_activation!r}")
  if q.shape[1] != k.shape[1] or not (isinstance(q_offset, int) and q_offset == 0):
    raise ValueError("self-gated (non-approximate) attention scores each key with the query "
                     "at the same position, so it needs q_len == kv_len and q_offset == 0 "
                     f"(got q {q.shape}, k {k.shape}, q_offset {q_offset!r}); KV-cache "
                     "decoding is not supported")
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  b, t, h, _ = q.shape
  kr = jnp.repeat(f32(k), h // k.shape[2], axis=2)
  qa = jax.nn.silu(f32(q)) if q_activation == "silu" else f32(q)
  s = jnp.einsum("bthd,bthd->bht", qa, kr) * jnp.float32(scale)  # [B, H, Tk]
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
