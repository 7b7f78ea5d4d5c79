"""Attention pooling heads for sequence classification / embeddings (pure JAX).

``lowrank_multihead_pool`` -- "Low Rank Factorization for Compact Multi-Head Self-Attention"
(Mehta, Rangwala & Ramakrishnan, arXiv 1912.00835; LAMA). ``m`` attention distributions over
the tokens come from one low-rank bilinear form against a global context (query) vector
``c`` instead of ``m`` full heads (the paper's Eq. 3.13, as in the public reference
implementation)::

    s_{k,i} = tanh( sum_r (P_k^T c)_r (Q_k^T h_i)_r )     P, Q: [D, m, r]  (rank r per head)
    s_{:,i} = s_{:,i} / |s_{:,i}|_2                       (L2 over the m heads; optional)
    A_{k,:} = softmax_i(s_{k,i})                           (over the real tokens)
    M       = A H  in R^{m x D},  pooled = vec(M)          (m * D features, to the classifier)

``c`` is a learned global query vector (``context="learned"``, as asked in this project's
issue) or the mean of the token states (``context="mean"``, what the reference
implementation does). Departures: the paper pools GRU states; here the encoder's final
(normalised) token states. ``rank`` > 1 generalises the rank-1 form of the reference code.

``multilayer_trainable_pool`` -- "Pooling And Attention: What Are Effective Designs For
LLM-Based Embedding Models?" (Tang & Yang, arXiv 2409.02727), Multi-Layers Trainable Pooling:
every layer's hidden states are summarised per layer (mean over real tokens with
bidirectional attention -- the paper's model 5 -- or the last token -- the EOS of its causal
model 3), a trainable layer embedding is added, and ``N`` learned latents cross-attend to the
``L`` layer vectors (one pre-norm cross-attention and a GEGLU feed-forward, both residual);
the latents are averaged and L2-normalised::

    S   = summary(h^(1..L)) + E_layer                      [B, L, D]
    X   = lat + MHA(q = LN_q(lat) W_q, k = LN_kv(S) W_k, v = LN_kv(S) W_v) W_o
    X   = X + W_2 GEGLU(W_1 LN_ff(X) + b_1) + b_2
    out = normalize(mean_n X_n)

Departures: sizes are hyperparameters (the paper: 768 latents, 32 heads of width 2048 for a
4096-wide LLM); hidden states are the block outputs of this encoder (the last one after the
final norm, as HF's ``hidden_states``; the embedding output is left out, as in the paper).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from attnlab.core.mechanisms import softmax as softmax_lib
from attnlab.core.mechanisms._mixers import check_valid, f32, layer_norm, masked_softmax
from attnlab.core import registry

Array = jax.Array

CONTEXTS = ("learned", "mean")
SUMMARIES = ("mean", "last")


def masked_mean(h: Array, valid: Array | None) -> Array:
  """Mean over axis -2 of ``h [..., B, T, D]`` counting only ``valid [B, T]`` tokens."""
  if valid is None:
    return jnp.mean(f32(h), axis=-2)
  w = valid.astype(jnp.float32)[..., None]
  return jnp.sum(f32(h) * w, axis=-2) / jnp.maximum(jnp.sum(w, axis=-2), 1.0)


def lowrank_multihead_pool(h: Array, p: Array, q: Array, *, context: Array | None = None,
                           valid: Array | None = None, l2_normalize: bool = True,
                           eps: float = 1e-6) -> tuple[Array, Array]:
  """LAMA pooling (see the module docstring).

  Args:
    h: token states ``[B, T, D]``.
    p, q: ``[D, m, r]`` factors of the ``m`` bilinear forms (rank ``r``).
    context: global query ``[D]`` or ``[B, D]``; None = masked mean of ``h``.
    valid: ``[B, T]`` real tokens (others get zero attention); None = all.
    l2_normalize: divide each token's ``m`` scores by their L2 norm (+ eps).
    eps: added to the norm.

  Returns:
    ``(pooled [B, m * D], weights [B, m, T])`` float32.
  """
  b, t, d = h.shape
  if p.shape != q.shape or p.ndim != 3 or p.shape[0] != d:
    raise ValueError(f"p and q must both have shape [D={d}, heads, rank], got {p.shape} and "
                     f"{q.shape}")
  valid = check_valid(valid, b, t)
  hf = f32(h)
  c = masked_mean(hf, valid) if context is None else f32(context)
  if c.ndim == 1:
    c = jnp.broadcast_to(c[None], (b, d))
  pc = jnp.einsum("bd,dmr->bmr", c, f32(p))
  qh = jnp.einsum("btd,dmr->btmr", hf, f32(q))
  s = jnp.tanh(jnp.sum(pc[:, None] * qh, axis=-1))  # [B, T, m]
  if l2_normalize:
    s = s / (jnp.linalg.norm(s, axis=-1, keepdims=True) + eps)
  s = jnp.swapaxes(s, 1, 2)  # [B, m, T]
  allowed = None if valid is None else valid[:, None, :]
  weights = masked_softmax(s, allowed, axis=-1)
  pooled = jnp.einsum("bmt,btd->bmd", weights, hf)
  return pooled.reshape(b, -1), weights


def layer_summaries(hiddens: Array, valid: Array | None = None, summary: str = "mean") -> Array:
  """``hiddens [L, B, T, D]`` -> ``[B, L, D]``: masked mean, or the last real token."""
  if summary not in SUMMARIES:
    raise ValueError(f"summary must be one of {list(SUMMARIES)}, got {summary!r}")
  n, b, t, d = hiddens.shape
  valid = check_valid(valid, b, t)
  if summary == "mean":
    out = masked_mean(hiddens, valid)  # [L, B, D]
  else:
    if valid is None:
      last = jnp.full((b,), t - 1)
    else:  # last real position (right padding or any layout)
      last = jnp.max(jnp.where(valid, jnp.arange(t)[None], 0), axis=1)
    out = jnp.take_along_axis(f32(hiddens), last[None, :, None, None], axis=2)[:, :, 0]
  return jnp.swapaxes(out, 0, 1)


def multilayer_trainable_pool(hiddens: Array, params: Mapping[str, Any], *, num_heads: int,
                              valid: Array | None = None, summary: str = "mean",
                              normalize: bool = True, eps: float = 1e-5) -> Array:
  """Multi-Layers Trainable Pooling (see the module docstring).

  Args:
    hiddens: ``[L, B, T, D]`` every layer's token states.
    params: ``layer_emb [L, D]``, ``latents [N, D]``, ``ln_q_scale/bias [D]``,
      ``ln_kv_scale/bias [D]``, ``w_q [D, H, Dh]``, ``w_k [D, H, Dh]``, ``w_v [D, H, Dh]``,
      ``w_o [H, Dh, D]``, ``ln_ff_scale/bias [D]``, ``ff_w1 [D, 2F]``, ``ff_b1 [2F]``,
      ``ff_w2 [F, D]``, ``ff_b2 [D]``.
    num_heads: cross-attention heads ``H`` (must match the weights).
    valid: ``[B, T]`` real tokens.
    summary: "mean" or "last" per-layer summary.
    normalize: L2-normalise the output.
    eps: LayerNorm epsilon.

  Returns:
    ``[B, D]`` float32.
  """
  p = params
  n_layers, b, _, _ = hiddens.shape
  if p["layer_emb"].shape[0] != n_layers:
    raise ValueError(f"layer_emb has {p['layer_emb'].shape[0]} rows for {n_layers} layers")
  if p["w_q"].shape[1] != num_heads:
    raise ValueError(f"w_q has {p['w_q'].shape[1]} heads, num_heads={num_heads}")
  s = layer_summaries(hiddens, valid, summary) + f32(p["layer_emb"])[None]  # [B, L, D]
  lat = f32(p["latents"])  # [N, D]
  kv = layer_norm(s, p["ln_kv_scale"], p["ln_kv_bias"], eps)
  lq = layer_norm(lat, p["ln_q_scale"], p["ln_q_bias"], eps)
  qh = jnp.broadcast_to(jnp.einsum("nd,dhk->nhk", lq, f32(p["w_q"]))[None],
                        (b,) + (lat.shape[0],) + p["w_q"].shape[1:])
  kh = jnp.einsum("bld,dhk->blhk", kv, f32(p["w_k"]))
  vh = jnp.einsum("bld,dhk->blhk", kv, f32(p["w_v"]))
  o = softmax_lib.softmax_attention(qh, kh, vh)  # [B, N, H, Dh]
  x = jnp.einsum("bnhk,hkd->bnd", f32(o), f32(p["w_o"])) + lat[None]
  f = layer_norm(x, p["ln_ff_scale"], p["ln_ff_bias"], eps) @ f32(p["ff_w1"]) + f32(p["ff_b1"])
  a, g = jnp.split(f, 2, axis=-1)
  x = x + (a * jax.nn.gelu(g, approximate=False)) @ f32(p["ff_w2"]) + f32(p["ff_b2"])
  out = jnp.mean(x, axis=1)
  if normalize:
    out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
  return out


registry.register_mechanism(
    'lowrank_mha_pool', kind='pooling',
    paper='Low Rank Factorization for Compact Multi-Head Self-Attention (arXiv 1912.00835)',
    description='m heads a_k = softmax_i tanh((P_k^T c).(Q_k^T h_i)) with a learned global query '
                'c; pooled = concat_k a_k H',
    complexity='O(T d m r) time (m heads, rank r)')

registry.register_mechanism(
    'multilayer_pool', kind='pooling',
    paper='Pooling And Attention: What Are Effective Designs For LLM-Based Embedding '
          'Models? (arXiv 2409.02727)',
    description="learned latents cross-attend to per-layer summaries of every layer's hidden "
                'states (+ layer embedding), GEGLU FF, mean, L2 normalise',
    complexity='O(L T d + N L d) time (L layers, N latents)')
