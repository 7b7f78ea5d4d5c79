"""MoBA: Mixture of Block Attention.

Paper: "MoBA: Mixture of Block Attention for Long-Context LLMs" (Lu et al., arXiv 2502.13189).
The keys are cut into blocks of ``block_size``; every query token (per head) scores each block
by ``q . mean(k_block)`` and attends to the ``top_k`` best blocks, the block holding the query
itself always among them; blocks after the query are never candidates (causal routing), and
inside the current block the usual causal mask applies. Attention over the union of selected
blocks is one softmax; the efficient path computes each (query, block) pair separately and
merges the pairs by log-sum-exp, as MoBA's reference ("moba_efficient": a causal self-block
pass plus a pass over the selected blocks, combined by LSE).

Implementations:

* ``"chunked"`` (``moba_attention``): block-sparse, O(Tq * top_k * block_size) work and
  memory (``_grid.routed_block_attention``); the gate is ``[Tq, Tk / block_size]`` (block
  means), never ``[Tq, Tk]``. Refuses ``bias`` and ``alibi_slopes``.
* ``"xla"`` (``moba_reference``): the same routing as a dense ``[Tq, Tk]`` mask on dense
  softmax attention (takes every contract argument).

Departures / choices:

* Masks generalise causality: a block with no key visible to the query (``mask``) is not a
  candidate, and a block's gate is ``q . mean`` of the block's keys *visible to the query*
  (for causal attention: every key of a past block, so this is the paper's gate). Static masks
  whose partly visible blocks are only the query's own block (causal, bidirectional) use block
  means; other masks (padding lengths, segments, arrays, decoding with a traced ``q_offset``)
  compute the gate from the dense masked logits, O(Tq * Tk) work (cheap when decoding).
* Without a mask (bidirectional), every block is a candidate and the "current" block is the
  one at the query's position ``q_offset + i`` (clipped to the last block).
* The gate is not differentiated (top-k is a discrete choice; MoBA trains only through the
  attention). The paper's varlen FlashAttention kernels are replaced by static-shape gathers
  (rows padded per block to a tile); the Pallas / chunked tile tables of ``attnlab.kernels``
  and ``core/chunked.py`` are not used yet (data-dependent tables need kernel changes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import _scores
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array


def _check(block_size: Any, top_k: Any) -> tuple[int, int]:
  return (_grid.check_positive_int(block_size, "block_size"),
          _grid.check_positive_int(top_k, "top_k"))


def _fast_gate_ok(summary: Any, cur: np.ndarray) -> bool:
  """Block means are exact when the (static) summary marks as PARTIAL only the query's own
  block."""
  if not isinstance(summary, np.ndarray):
    return False
  partial = summary == masks_lib.PARTIAL  # [Bm, Tq, NB]
  own = np.arange(summary.shape[-1])[None, None, :] == cur[None, :, None]
  return not np.any(partial & ~own)


def moba_gate(q: Array, k: Array, mask: masks_lib.Mask | None, block_size: int,
              q_offset: Any = 0) -> tuple[Array, Array, Array]:
  """``(gate [B, H, Tq, NB] float32, candidate bool [B|1, 1|H, Tq, NB], current block [Tq])``.

  ``gate[b, h, i, j] = q_i . mean of block j's keys visible to query i``.
  """
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  nb = -(-tk // block_size)
  static_off = isinstance(q_offset, (int, np.integer))
  if static_off:
    cur_np = np.minimum((np.arange(tq) + int(q_offset)) // block_size, nb - 1)
    cur = jnp.asarray(cur_np)
  else:
    cur_np = None
    cur = jnp.minimum((jnp.arange(tq) + q_offset) // block_size, nb - 1)
  summary = None if mask is None else mask.block_summary(tq, tk, 1, block_size)
  if mask is None or (static_off and _fast_gate_ok(summary, cur_np)):
    pad = nb * block_size - tk
    kp = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0)))
    count = np.minimum(block_size, tk - np.arange(nb) * block_size).astype(np.float32)
    kmean = kp.reshape(b, nb, block_size, kh, d).sum(2) / count[None, :, None, None]
    gate = common.dense_logits(q.astype(jnp.float32), kmean, scale=1.0)  # [B, H, Tq, NB]
    cand = (jnp.ones((1, 1, tq, nb), bool) if summary is None
            else jnp.asarray(summary != masks_lib.EMPTY)[:, None])
  else:
    raw = common.dense_logits(q, k, scale=1.0)  # [B, H, Tq, Tk]
    vis = jnp.broadcast_to(mask.dense(tq, tk)[:, None], (1 if mask.batch_size is None else b,
                                                         1, tq, tk))
    pad = nb * block_size - tk
    raw = jnp.pad(raw, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(b, h, tq, nb, block_size)
    vis = jnp.pad(vis, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(*vis.shape[:3], nb,
                                                                     block_size)
    cnt = vis.sum(-1)
    gate = jnp.where(vis, raw, 0.0).sum(-1) / jnp.maximum(cnt, 1)
    cand = cnt > 0
  return jax.lax.stop_gradient(gate), cand, cur


def moba_route(q: Array, k: Array, mask: masks_lib.Mask | None, block_size: int, top_k: int,
               q_offset: Any = 0) -> Array:
  """Selected key blocks int32 ``[B, H, Tq, min(top_k, NB)]`` (``-1``: fewer candidates)."""
  gate, cand, cur = moba_gate(q, k, mask, block_size, q_offset)
  nb = gate.shape[-1]
  own = jnp.arange(nb)[None, :] == cur[:, None]  # [Tq, NB]
  score = jnp.where(cand, gate, -jnp.inf)
  score = jnp.where(own & cand, jnp.inf, score)
  vals, idx = jax.lax.top_k(score, min(top_k, nb))
  return jnp.where(vals > -jnp.inf, idx, -1).astype(jnp.int32)


def moba_reference(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                   bias: Array | None = None, scale: float | None = None,
                   softcap: float | None = None, alibi_slopes: Array | None = None,
                   q_offset: Any = 0, head_mask: Array | None = None,
                   return_weights: bool = False, block_size: int = 64, top_k: int = 3):
  """MoBA as a dense ``[Tq, Tk]`` routing mask on softmax attention (reference, "xla")."""
  block_size, top_k = _check(block_size, top_k)
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  tk = k.shape[1]
  sel = moba_route(q, k, mask, block_size, top_k, q_offset)
  allowed = _grid.selection_mask(sel, tk, block_size)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights,
                                allowed=allowed)


def moba_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                   bias: Array | None = None, scale: float | None = None,
                   softcap: float | None = None, alibi_slopes: Array | None = None,
                   q_offset: Any = 0, head_mask: Array | None = None,
                   return_weights: bool = False, block_size: int = 64, top_k: int = 3):
  """MoBA, block-sparse ("chunked"). q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]`` -> ``[B,Tq,H,Dv]``.

  ``return_weights`` recomputes the weights densely (``moba_reference``).
  """
  if bias is not None or alibi_slopes is not None:
    raise ValueError("moba_attention does not take bias or alibi_slopes; use moba_reference")
  if return_weights:
    return moba_reference(q, k, v, mask=mask, scale=scale, softcap=softcap, q_offset=q_offset,
                          head_mask=head_mask, return_weights=True, block_size=block_size,
                          top_k=top_k)
  block_size, top_k = _check(block_size, top_k)
  mask, _, scale, _, head_mask = softmax_lib.prepare(q, k, v, mask, None, scale, None,
                                                     head_mask)
  sel = moba_route(q, k, mask, block_size, top_k, q_offset)
  out = _grid.routed_block_attention(q, k, v, sel, block_size=block_size, scale=scale,
                                     softcap=softcap, mask=mask)
  return common.apply_head_mask(out, head_mask).astype(q.dtype)


def _supports(**call: Any) -> str | None:
  return _grid.refuse(call, moba_attention,
                      bias="dense biases need the dense path, implementation='xla'",
                      alibi_slopes="use implementation='xla'")


registry.register_mechanism(
    "moba", kind="attention",
    paper="MoBA: Mixture of Block Attention for Long-Context LLMs (arXiv 2502.13189)",
    description="per query, top-k key blocks by q . mean(k_block) (own block always, causal "
                "routing), softmax over the selected blocks",
    complexity="O(T k B d + T^2 d / B) time, O(T k B) memory (k = top_k, B = block_size)",
    kernel="block-sparse gather (chunked)",
    implementations={"xla": moba_reference})
registry.register_implementation("moba", "chunked", moba_attention, supports=_supports)
