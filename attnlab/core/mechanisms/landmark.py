"""Landmark attention: blocks gated by a landmark key, grouped softmax, top-k block retrieval.

Paper: "Landmark Attention: Random-Access Infinite Context Length for Transformers"
(Mohtashami, Jaggi; arXiv 2305.16300). The keys are cut into blocks of ``block_size``; each
block's landmark is its last token. A query attends with one softmax over (a) the visible
keys of its own block and (b) the landmark keys of the other visible blocks; the weight of
landmark ``j`` is then spread over block ``j``'s tokens by a softmax inside the block (the
paper's grouped softmax)::

    w = softmax({s_it : t in own block} u {s_il_j : other blocks j})
    out_i = sum_own w_t v_t + sum_j w_lj sum_{t in j} softmax_{t in j}(s_it) v_t

``retrieval_top_k`` (inference, e.g. over a KV cache): only the ``top_k`` other blocks with the
highest landmark score ``s_il_j`` stay in the outer softmax (the paper's retrieval; the others
are masked). ``None``: every block (training).

Departures: the landmark is the block's last token (the paper appends a dedicated landmark
token to each block of ``block_size - 1`` tokens); its value also counts as a member of its
block. A block is gated only when its landmark is visible to the query (causal: complete past
blocks); the mask applies to every key. Implementation: dense ``[Tq, Tk]`` ("xla"), O(T^2)
like the paper's training; retrieval makes the value read sparse, not the score pass.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import registry
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import _scores

Array = jax.Array
NEG = _grid.NEG


def landmark_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                       v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                       scale: float | None = None, softcap: float | None = None,
                       alibi_slopes: Array | None = None, q_offset: Any = 0,
                       head_mask: Array | None = None, return_weights: bool = False,
                       block_size: int = 8, retrieval_top_k: int | None = None):
  """Grouped-softmax landmark attention. q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]``;
  ``return_weights``: the effective weights over keys (they sum to one per row)."""
  block_size = _grid.check_positive_int(block_size, "block_size")
  if retrieval_top_k is not None:
    retrieval_top_k = _grid.check_positive_int(retrieval_top_k, "retrieval_top_k")
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  b, tq, h, _ = q.shape
  tk = k.shape[1]
  nb = -(-tk // block_size)
  pad = nb * block_size - tk
  s = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                          q_offset=q_offset)  # [B, H, Tq, Tk]
  vis = jnp.ones((1, 1, tq, tk), bool) if mask is None else mask.dense(tq, tk)[:, None]
  vis = vis & ~jnp.isneginf(s)
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  own_blk = q_pos // block_size  # [Tq]
  k_blk = k_pos // block_size
  own = (k_blk[None, :] == own_blk[:, None])[None, None]  # [1, 1, Tq, Tk]
  # Inner softmax inside every block (over the visible keys of the block).
  sb = jnp.pad(jnp.where(vis, s, NEG), ((0, 0),) * 3 + ((0, pad),),
               constant_values=NEG).reshape(b, h, tq, nb, block_size)
  vb = jnp.pad(jnp.broadcast_to(vis, s.shape), ((0, 0),) * 3 + ((0, pad),)).reshape(sb.shape)
  m_in = jax.lax.stop_gradient(jnp.max(sb, axis=-1, keepdims=True))
  e_in = jnp.where(vb, jnp.exp(sb - m_in), 0.0)
  l_in = jnp.sum(e_in, axis=-1, keepdims=True)
  p_in = (e_in / jnp.where(l_in > 0, l_in, 1.0)).reshape(b, h, tq, nb * block_size)[..., :tk]
  # Gates: landmark scores of complete, visible, non-own blocks (+ retrieval top-k).
  lm = jnp.arange(nb) * block_size + block_size - 1  # [NB]
  lm_ok = lm < tk
  lm_c = jnp.minimum(lm, tk - 1)
  g = s[..., lm_c]  # [B, H, Tq, NB]
  g_ok = (jnp.take(vis, lm_c, axis=-1) & lm_ok & (jnp.arange(nb)[None, :] != own_blk[:, None])
          & (l_in[..., 0] > 0))
  if retrieval_top_k is not None and retrieval_top_k < nb:
    ranked = jnp.where(g_ok, g, -jnp.inf)
    kth = jax.lax.top_k(jax.lax.stop_gradient(ranked), retrieval_top_k)[0][..., -1:]
    g_ok = g_ok & (ranked >= kth)
  # Outer softmax over own-block keys and the gates.
  own_ok = vis & own
  outer = jnp.concatenate([jnp.where(own_ok, s, NEG), jnp.where(g_ok, g, NEG)],
                          axis=-1)
  ok = jnp.concatenate([jnp.broadcast_to(own_ok, s.shape), g_ok], axis=-1)
  m = jax.lax.stop_gradient(jnp.max(outer, axis=-1, keepdims=True))
  e = jnp.where(ok, jnp.exp(outer - m), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(den > 0, den, 1.0)
  w_own, w_gate = w[..., :tk], w[..., tk:]
  weights = jnp.where(own, w_own, jnp.take(w_gate, k_blk, axis=-1) * p_in)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


registry.register_mechanism(
    "landmark", kind="attention",
    paper="Landmark Attention: Random-Access Infinite Context Length for Transformers "
          "(arXiv 2305.16300)",
    description="grouped softmax: own-block keys + one landmark key per other block, the "
                "landmark's weight spread by a softmax inside its block; top-k block retrieval",
    complexity="O(T^2 d) time, O(T^2) memory (dense)",
    implementations={"xla": landmark_attention})
