"""MoBA: Mixture of Block Attention.

Paper: "MoBA: Mixture of Block Attention for Long-Context LLMs" (Lu et al., arXiv 2502.13189).
The keys are cut into blocks of ``block_size``; every query token (per head) scores each block
by ``q . mean(k_block)`` and attends to the ``top_k`` best blocks, the block holding the query
itself always among them; blocks after the query are never candidates (causal routing), and
inside the current block the usual causal mask applies. Attention over the union of selected
blocks is one softmax; the efficient path computes each (query, block) pair separately and
merges the pairs by log-sum-exp, as MoBA's reference ("moba_efficient": a causal self-block
pass plus a pass over the selected blocks, combined by LSE).

Routing granularity (``routing``):

* ``"token"`` (default, the paper): one selection per query token and head.
* ``"block"``: one selection per query block (``block_size`` queries) and head, made by the
  block's *first* query: ``q_first . mean(k_block)`` (so no query's routing depends on a later
  token; a mean over the block's queries would let later queries change earlier outputs).
  Every selected (query block, key block) pair is then a whole tile, so the selection *is* a
  tile table: the chunked path (``core/chunked.py``) and the Pallas kernels visit only the
  selected tiles (earlier selected blocks: FULL tiles, no elementwise mask; the current block:
  the causal PARTIAL tile). This departs from the paper (coarser routing, one gate query per
  block); it is the granularity block-sparse kernels need. It needs a static ``q_offset``
  that is a multiple of ``block_size`` (full passes and block-aligned prefill chunks; token
  by token decoding uses ``routing="token"``).

Implementations:

* ``"xla"`` (``moba_reference``): the routing as a dense ``[Tq, Tk]`` mask on dense softmax
  attention (takes every contract argument; both routings).
* ``"chunked"`` (``moba_attention``): ``routing="token"``: block-sparse rows
  (``_grid.routed_block_attention``, O(Tq * top_k * block_size) work and memory; the gate is
  ``[Tq, Tk / block_size]`` (block means), never ``[Tq, Tk]``). ``routing="block"``:
  ``chunked.chunked_attention`` with tile = MoBA block and the selection as per-(batch, head)
  tile states (``tile_states``; heads are folded into the batch so every (batch, head) has its
  own table). Refuses ``bias`` and ``alibi_slopes``.
* ``"pallas"`` (``moba_pallas``): ``routing="block"`` on the flash kernels (``tile_states``,
  one table per (batch, head); kernel tile = the largest power of two <= 128 dividing
  ``block_size``, at least 16). ``routing="token"`` only when ``top_k`` covers every key
  block (then both routings select all candidates and agree); otherwise refused (a per-token
  selection would need a per-row mask inside a tile). ``debug_counts=True`` also returns the
  tiles each (batch, head, q tile) visited.

The tile paths need the tiles inside the routing blocks (``block_tile_states`` raises
otherwise).

Departures / choices:

* Masks generalise causality: a block with no key visible to the query (``mask``) is not a
  candidate, and a block's gate is ``q . mean`` of the block's keys *visible to the query*
  (for causal attention: every key of a past block, so this is the paper's gate). Static masks
  whose partly visible blocks are only the query's own block (causal, bidirectional) use block
  means; other masks (padding lengths, segments, arrays, decoding with a traced ``q_offset``)
  compute the gate from the dense masked logits, O(Tq * Tk) work (cheap when decoding).
  ``routing="block"``: a key block is a candidate when any of its keys is visible to any query
  of the query block (the mask's block summary), and the gate uses the mean of *all* keys of
  the key block (masks aside).
* Without a mask (bidirectional), every block is a candidate and the "current" block is the
  one at the query's position ``q_offset + i`` (clipped to the last block).
* The gate is not differentiated (top-k is a discrete choice; MoBA trains only through the
  attention). The paper's varlen FlashAttention kernels are replaced by static-shape gathers
  (``routing="token"``) or by the tile tables (``routing="block"``).
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


ROUTINGS = ("token", "block")


def _check(block_size: Any, top_k: Any, routing: Any = "token") -> tuple[int, int]:
  if routing not in ROUTINGS:
    raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
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


def _key_block_means(k: Array, block_size: int) -> Array:
  """float32 ``[B, NB, K, D]``: mean of every key block (the last one may be short)."""
  b, tk, kh, d = k.shape
  nb = -(-tk // block_size)
  kp = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, nb * block_size - tk), (0, 0), (0, 0)))
  count = np.minimum(block_size, tk - np.arange(nb) * block_size).astype(np.float32)
  return kp.reshape(b, nb, block_size, kh, d).sum(2) / count[None, :, None, None]


def _aligned(q_offset: Any, block_size: int) -> bool:
  """Whether the query blocks of the call start at ``q_offset`` on a MoBA block boundary
  (static): then local q tiles of ``block_size`` are the routing blocks."""
  return isinstance(q_offset, (int, np.integer)) and int(q_offset) % block_size == 0


def moba_block_route(q: Array, k: Array, mask: masks_lib.Mask | None, block_size: int,
                     top_k: int, q_offset: Any = 0) -> Array:
  """``routing="block"``: selected key blocks, bool ``[B, H, NG, NB]`` per query block.

  Query block ``g`` holds the call's queries ``[g * block_size, (g + 1) * block_size)``
  (``q_offset`` must be a static multiple of ``block_size``). Its gate for key block ``j`` is
  ``q_first . mean(k of j)`` with ``q_first`` the block's first query, so the choice made for
  every query of the block uses no later token (causal). Candidates are the key blocks with any
  key visible to any query of the block (the mask's block summary); the block's own key block
  (absolute block ``q_offset / block_size + g``, clipped) is always kept; the ``top_k`` best
  are selected.
  """
  if not _aligned(q_offset, block_size):
    raise ValueError(f"moba routing='block' needs a static q_offset that is a multiple of "
                     f"block_size ({block_size}) (each query block's first query must be in "
                     f"the call), got {q_offset!r}; use routing='token'")
  tq, tk = q.shape[1], k.shape[1]
  nb, ng = -(-tk // block_size), -(-tq // block_size)
  q_first = q[:, ::block_size].astype(jnp.float32)  # [B, NG, H, D]
  gate = common.dense_logits(q_first, _key_block_means(k, block_size), scale=1.0)
  if mask is None:
    cand = jnp.ones((1, 1, ng, nb), bool)
  else:
    summary = mask.block_summary(tq, tk, block_size, block_size)  # [Bm, NG, NB]
    cand = jnp.asarray(summary != masks_lib.EMPTY)[:, None]
  cur = np.minimum(int(q_offset) // block_size + np.arange(ng), nb - 1)
  own = jnp.asarray(np.arange(nb)[None, :] == cur[:, None])  # [NG, NB]
  score = jnp.where(cand, jax.lax.stop_gradient(gate), -jnp.inf)
  score = jnp.where(own & cand, jnp.inf, score)
  vals, idx = jax.lax.top_k(score, min(top_k, nb))
  hit = (idx[..., None] == jnp.arange(nb)) & (vals > -jnp.inf)[..., None]
  return jnp.any(hit, axis=-2)


def _tile_blocks(length: int, tile: int, n: int, block_size: int, axis: str) -> np.ndarray:
  """MoBA block of each of ``n`` tiles of ``tile`` positions (``-1``: tile past the end);
  raises when a tile straddles two blocks."""
  start = np.arange(n) * tile
  last = np.minimum(start + tile, length) - 1
  real = start < length
  bad = real & (last // block_size != start // block_size)
  if bad.any():
    raise ValueError(f"moba routing='block' on tiles: the {axis} tile ({tile}) must lie inside "
                     f"one MoBA block, so block_size ({block_size}) must be a multiple of it "
                     f"(sequence length {length})")
  return np.where(real, start // block_size, -1)


def block_tile_states(selected: Array, tq: int, tk: int, block_size: int):
  """The selection as a ``tile_states`` function for ``chunked.chunked_attention`` /
  ``flash_attention``: ``(bq, bk, nq, nk) -> int32 [B * H, nq, nk]``, FULL for tiles inside a
  selected (query block, key block) pair, EMPTY otherwise (the call's mask then makes the
  diagonal tiles PARTIAL). ``selected`` bool ``[B, H, NG, NB]``
  (``moba_block_route``: query block ``g`` = local q block ``g``)."""
  sel = selected.reshape((-1,) + selected.shape[2:])

  def states(bq: int, bk: int, nq: int, nk: int) -> Array:
    rows = _tile_blocks(tq, bq, nq, block_size, "q")
    cols = _tile_blocks(tk, bk, nk, block_size, "k")
    s = sel[:, np.maximum(rows, 0)][:, :, np.maximum(cols, 0)]
    s = s & jnp.asarray((rows >= 0)[:, None] & (cols >= 0)[None, :])
    return jnp.where(s, masks_lib.FULL, masks_lib.EMPTY).astype(jnp.int32)
  return states


def moba_reference(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                   bias: Array | None = None, scale: float | None = None,
                   softcap: float | None = None, alibi_slopes: Array | None = None,
                   q_offset: Any = 0, head_mask: Array | None = None,
                   return_weights: bool = False, block_size: int = 64, top_k: int = 3,
                   routing: str = "token"):
  """MoBA as a dense ``[Tq, Tk]`` routing mask on softmax attention (reference, "xla")."""
  block_size, top_k = _check(block_size, top_k, routing)
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  tk = k.shape[1]
  if routing == "block":
    selected = moba_block_route(q, k, mask, block_size, top_k, q_offset)
    grp = np.arange(q.shape[1]) // block_size
    allowed = selected[:, :, grp][..., np.arange(tk) // block_size]  # [B, H, Tq, Tk]
  else:
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
                   return_weights: bool = False, block_size: int = 64, top_k: int = 3,
                   routing: str = "token"):
  """MoBA, block-sparse ("chunked"). q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]`` -> ``[B,Tq,H,Dv]``.

  ``routing="token"``: the row-gather engine of ``_grid``; ``routing="block"``: the chunked
  tile loops over the selected tiles only (``_tile_path``). ``return_weights`` recomputes the
  weights densely (``moba_reference``).
  """
  if bias is not None or alibi_slopes is not None:
    raise ValueError("moba_attention does not take bias or alibi_slopes; use moba_reference")
  if return_weights:
    return moba_reference(q, k, v, mask=mask, scale=scale, softcap=softcap, q_offset=q_offset,
                          head_mask=head_mask, return_weights=True, block_size=block_size,
                          top_k=top_k, routing=routing)
  block_size, top_k = _check(block_size, top_k, routing)
  if routing == "block":
    return _tile_path(q, k, v, "chunked", mask=mask, scale=scale, softcap=softcap,
                      q_offset=q_offset, head_mask=head_mask, block_size=block_size,
                      top_k=top_k)
  mask, _, scale, _, head_mask = softmax_lib.prepare(q, k, v, mask, None, scale, None,
                                                     head_mask)
  sel = moba_route(q, k, mask, block_size, top_k, q_offset)
  out = _grid.routed_block_attention(q, k, v, sel, block_size=block_size, scale=scale,
                                     softcap=softcap, mask=mask)
  return common.apply_head_mask(out, head_mask).astype(q.dtype)


def pallas_tile(block_size: int) -> int | None:
  """The flash-kernel tile of the block-routed pallas path: the largest power of two <= 128
  dividing ``block_size`` (at least 16, the kernels' smallest tile), else None."""
  t = 128
  while t >= 16:
    if block_size % t == 0:
      return t
    t //= 2
  return None


def _fold_heads(x: Array, heads: int) -> Array:
  """``[B, T, K, D]`` -> ``[B * H, T, 1, D]`` (kv heads repeated for their query heads)."""
  b, t, kh, d = x.shape
  if kh != heads:
    x = jnp.repeat(x, heads // kh, axis=2)
  return x.transpose(0, 2, 1, 3).reshape(b * heads, t, 1, d)


def _fold_mask(mask: masks_lib.Mask | None, batch: int, heads: int):
  """The mask for the head-folded batch ``B * H`` (batch leaves repeated per head)."""
  if mask is None or batch == 1 or heads == 1 or mask.batch_size is None:
    return mask

  def rep(x):
    if isinstance(x, masks_lib.FunctionMask):
      return _fold_function_mask(x, batch, heads)
    if getattr(x, "ndim", 0) >= 1 and x.shape[0] == batch:
      return jnp.repeat(x, heads, axis=0)
    return x
  return jax.tree.map(rep, mask, is_leaf=lambda x: isinstance(x, masks_lib.FunctionMask))


def _fold_function_mask(mask: masks_lib.FunctionMask, batch: int,
                        heads: int) -> masks_lib.FunctionMask:
  """``mask`` over the folded batch: folded index ``b * heads + h`` reads example ``b`` (a mask
  not bound to a batch is the same for every example and is returned as it is)."""
  if mask.batch_size is None:
    return mask

  def folded(b, h, q, k):
    del h
    return mask.evaluate_at(b // heads, q, k)
  return masks_lib.FunctionMask(folded, q_offset=mask.q_offset).bind_batch(batch * heads)


def _tile_path(q, k, v, implementation: str, *, mask, scale, softcap, q_offset, head_mask,
               block_size: int, top_k: int, debug_counts: bool = False, **kernel):
  """``routing="block"`` on the tile tables of ``chunked`` or ``pallas`` (see the module
  docstring). Returns ``[B, Tq, H, Dv]`` (and with ``debug_counts`` the visited tiles
  ``[B, H, n_q_tiles]``)."""
  mask, _, scale, _, head_mask = softmax_lib.prepare(q, k, v, mask, None, scale, None,
                                                     head_mask)
  b, tq, h, _ = q.shape
  tk = k.shape[1]
  selected = moba_block_route(q, k, mask, block_size, top_k, q_offset)
  states = block_tile_states(selected, tq, tk, block_size)
  qf, kf, vf = _fold_heads(q, h), _fold_heads(k, h), _fold_heads(v, h)
  mf = _fold_mask(mask, b, h)
  common_kw = dict(mask=mf, scale=scale, softcap=softcap, q_offset=q_offset, tile_states=states)
  counts = None
  if implementation == "chunked":
    from attnlab.core import chunked  # pylint: disable=g-import-not-at-top
    out = chunked.chunked_attention(qf, kf, vf, block_q=block_size, block_k=block_size,
                                    **common_kw)
  else:
    tile = pallas_tile(block_size)
    if tile is None:
      raise ValueError(f"moba on 'pallas': block_size ({block_size}) must be a multiple of 16 "
                       "(the kernel tile must divide it)")
    tiles = dict(block_q=tile, block_k=tile, block_q_bwd=tile, block_k_bwd=tile)
    out = _scores.attend("pallas")(qf, kf, vf, debug_counts=debug_counts, **tiles, **kernel,
                                   **common_kw)
    if debug_counts:
      out, c = out
      counts = c.sum(-1).reshape(b, h, -1)  # FULL + PARTIAL tiles per q tile
  out = out.reshape(b, h, tq, -1).transpose(0, 2, 1, 3)
  out = common.apply_head_mask(out, head_mask).astype(q.dtype)
  return (out, counts) if debug_counts else out


def moba_pallas(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                bias: Array | None = None, scale: float | None = None,
                softcap: float | None = None, alibi_slopes: Array | None = None,
                q_offset: Any = 0, head_mask: Array | None = None,
                return_weights: bool = False, block_size: int = 64, top_k: int = 3,
                routing: str = "token", debug_counts: bool = False, interpret: Any = None,
                kernel_backend: str | None = None):
  """MoBA on the Pallas flash kernels ("pallas"): the block routing's selection as
  per-(batch, head) tile tables. ``routing="token"`` runs only when ``top_k`` covers every key
  block (both routings then agree). ``debug_counts=True`` returns ``(out, visited)`` with
  ``visited [B, H, n_q_tiles]`` the tiles the forward kernel processed (not differentiable).
  """
  if bias is not None or alibi_slopes is not None:
    raise ValueError("moba_pallas does not take bias or alibi_slopes; use moba_reference")
  block_size, top_k = _check(block_size, top_k, routing)
  if routing == "token" and top_k < -(-k.shape[1] // block_size):
    raise ValueError(_TOKEN_ON_KERNELS)
  if return_weights:
    return moba_reference(q, k, v, mask=mask, scale=scale, softcap=softcap, q_offset=q_offset,
                          head_mask=head_mask, return_weights=True, block_size=block_size,
                          top_k=top_k, routing=routing)
  return _tile_path(q, k, v, "pallas", mask=mask, scale=scale, softcap=softcap,
                    q_offset=q_offset, head_mask=head_mask, block_size=block_size, top_k=top_k,
                    debug_counts=debug_counts, interpret=interpret,
                    kernel_backend=kernel_backend)


_TOKEN_ON_KERNELS = ("routing='token' (one selection per query) needs a per-row selection "
                     "inside a tile; the kernels take routing='block' (or top_k >= the number "
                     "of key blocks); use implementation='chunked' or 'xla'")


def _tile_refusal(call: dict[str, Any]) -> str | None:
  """Why the block-routed tile path cannot take ``call`` (None: it can)."""
  bs = call.get("block_size", 64)
  q_offset = call.get("q_offset", 0)
  if not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs <= 0:
    return None  # the function's own check raises with the argument's name
  if not _aligned(q_offset, int(bs)):
    return (f"routing='block' needs a static q_offset that is a multiple of block_size "
            f"({bs})")
  from attnlab.core import chunked  # pylint: disable=g-import-not-at-top
  return chunked.forward_mode_reason({n: call.get(n) for n in ("q", "k", "v", "q_offset")})


def _supports(**call: Any) -> str | None:
  reason = _grid.refuse(call, moba_attention,
                        bias="dense biases need the dense path, implementation='xla'",
                        alibi_slopes="use implementation='xla'")
  if reason or call.get("routing", "token") != "block":
    return reason
  return _tile_refusal(call)


_OWN = ("block_size", "top_k", "routing", "debug_counts")


def _supports_pallas(**call: Any) -> str | None:
  reason = _grid.refuse(call, moba_pallas,
                        bias="dense biases need the dense path, implementation='xla'",
                        alibi_slopes="use implementation='xla'")
  if reason:
    return reason
  from attnlab.core import api  # pylint: disable=g-import-not-at-top
  from attnlab.core import chunked  # pylint: disable=g-import-not-at-top
  api.load_plugins()
  base = registry.get_mechanism("softmax").implementations.get("pallas")
  if base is None:
    return "attnlab.kernels failed to import"
  reason = base.supports(**{n: x for n, x in call.items() if n not in _OWN})
  if reason:
    return reason
  explicit = chunked._is_explicit(  # pylint: disable=protected-access
      *(call.get(n) for n in ("q", "k", "v")))
  if explicit:
    return "explicitly sharded inputs (use jax.shard_map)"
  bs, top_k, k = call.get("block_size", 64), call.get("top_k", 3), call.get("k")
  if call.get("routing", "token") == "token" and isinstance(top_k, (int, np.integer)) and (
      isinstance(bs, (int, np.integer)) and bs > 0 and k is not None
      and top_k < -(-k.shape[1] // bs)):
    return _TOKEN_ON_KERNELS
  if isinstance(bs, (int, np.integer)) and bs > 0 and pallas_tile(int(bs)) is None:
    return f"block_size ({bs}) must be a multiple of 16 (the kernel tile must divide it)"
  return _tile_refusal(call)


registry.register_mechanism(
    "moba", kind="attention",
    paper="MoBA: Mixture of Block Attention for Long-Context LLMs (arXiv 2502.13189)",
    description="per query, top-k key blocks by q . mean(k_block) (own block always, causal "
                "routing), softmax over the selected blocks",
    complexity="O(T k B d + T^2 d / B) time, O(T k B) memory (k = top_k, B = block_size)",
    kernel="block-sparse gather (chunked); routing='block': chunked + pallas tile tables",
    implementations={"xla": moba_reference})
registry.register_implementation("moba", "chunked", moba_attention, supports=_supports)
registry.register_implementation("moba", "pallas", moba_pallas, supports=_supports_pallas,
                                 auto_platforms=("gpu", "tpu"))
