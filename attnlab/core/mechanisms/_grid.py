"""Helpers shared by the sparse, routed and local mechanisms (moba, vmoba, biformer, landmark,
halo, axial, fit, retrieval_topk): grid layouts of a 1D sequence and block-sparse attention
over data-dependent key-block selections.

Layout as ``attnlab.core.common``: q ``[B, Tq, H, D]``, k/v ``[B, Tk, K, D]``, query head ``h``
reads kv head ``h // (H // K)``.

``routed_block_attention`` is the block-sparse engine (MoBA's "efficient" path, in static
shapes): every query row (query, head) names up to ``S`` key blocks; the (row, block) pairs
are sorted by block, each block's rows are padded to a multiple of a query tile, and every
tile of rows attends to the one key block it belongs to (a dense ``[tile, block]`` matmul).
Per-pair partial results (max, sum, weighted values) are merged by log-sum-exp. Work and
memory are O(Tq * S * block) plus the padding (at most one tile per key block); nothing of
size ``[Tq, Tk]`` is built. The call's mask is applied elementwise inside every tile through
``mask.allowed`` at the tile's positions.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core import masks as masks_lib

Array = jax.Array
NEG = float(np.finfo(np.float32).min)


# ------------------------------------------------------------------------------------------
# Arguments.


def check_positive_int(x: Any, name: str) -> int:
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
    raise ValueError(f"{name} must be a positive int, got {x!r}")
  return int(x)


def check_grid(grid_shape: Sequence[int] | None, length: int, name: str = "grid_shape"
               ) -> tuple[int, ...]:
  """``grid_shape`` (row-major layout of a 1D sequence; one entry may be ``-1``, inferred as
  in ``reshape``) or ``(length,)`` when None; its product must be ``length``."""
  if grid_shape is None:
    return (length,)
  if (not isinstance(grid_shape, (tuple, list)) or not grid_shape
      or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or (s <= 0 and s != -1)
             for s in grid_shape) or list(grid_shape).count(-1) > 1):
    raise ValueError(f"{name} must be a non-empty tuple of positive ints (one may be -1), got "
                     f"{grid_shape!r}")
  grid = [int(s) for s in grid_shape]
  if -1 in grid:
    rest = math.prod(s for s in grid if s != -1)
    grid[grid.index(-1)] = length // rest if length % rest == 0 else -1
  if math.prod(grid) != length or min(grid) <= 0:
    raise ValueError(f"{name} {tuple(grid_shape)} does not lay out the sequence's {length} "
                     f"tokens (product of the sizes must be {length})")
  return tuple(grid)


def refuse(call: dict[str, Any], fn: Any, **unsupported: str) -> str | None:
  """A ``supports`` helper: unknown keywords, then the non-None arguments of ``unsupported``
  (name -> why)."""
  from attnlab.core import registry  # pylint: disable=g-import-not-at-top
  reason = registry.unaccepted_kwargs(fn, call)
  if reason:
    return reason
  for name, why in unsupported.items():
    val = call.get(name)
    if val is not None and val is not False:
      return f"{name} is not supported ({why})"
  return None


def full_pass_refusal(*, q, k, bias=None, alibi_slopes=None, q_offset=0, **_) -> str | None:
  """Why a gathered-layout ("chunked") grid path cannot take a call, or None: it needs a
  full pass over the grid (``Tq == Tk``, ``q_offset == 0``) and no dense bias / ALiBi."""
  if bias is not None or alibi_slopes is not None:
    return "bias / alibi_slopes need the dense path (implementation='xla')"
  if q.shape[1] != k.shape[1] or isinstance(q_offset, jax.core.Tracer) or np.any(
      np.asarray(q_offset) != 0):
    return "the gathered path needs a full pass (Tq == Tk, q_offset == 0); use 'xla'"
  return None


# ------------------------------------------------------------------------------------------
# Masks per batch element.


def mask_for_batch(mask: masks_lib.Mask | None, bi: Array, batch: int):
  """The mask restricted to batch element ``bi`` (a traced index; its batch axis kept at
  size 1), so that ``allowed`` returns ``[1, n, m]``."""
  if mask is None or mask.batch_size in (None, 1) or batch == 1:
    return mask

  def take(x):
    if isinstance(x, masks_lib.FunctionMask):
      return _function_mask_at(x, bi)
    if hasattr(x, "shape") and getattr(x, "ndim", 0) >= 1 and x.shape[0] == batch:
      return jax.lax.dynamic_slice_in_dim(jnp.asarray(x), bi, 1, axis=0)
    return x
  return jax.tree.map(take, mask, is_leaf=lambda x: isinstance(x, masks_lib.FunctionMask))


def _function_mask_at(mask: masks_lib.FunctionMask, bi: Array) -> masks_lib.FunctionMask:
  """A batch-1 FunctionMask that evaluates ``mask``'s function at batch index ``bi``: its
  function reads the batch index (document ids of example ``b``), and the arrays it closes
  over, concrete or traced, keep their batch axis."""
  if mask.batch_size is None:
    return mask
  bi = jnp.asarray(bi, jnp.int32)

  def at_bi(b, h, q, k):
    del h
    return mask.evaluate_at(jnp.zeros_like(b) + bi, q, k)
  return masks_lib.FunctionMask(at_bi, q_offset=mask.q_offset)


def allowed_at(mask: masks_lib.Mask | None, q_idx: Array, k_pos: Array) -> Array | None:
  """``mask.allowed`` for a batch of tiles: q_idx ``[n, bq]``, k_pos ``[n, bk]`` ->
  bool ``[n, bq, bk]`` (the mask already restricted to one batch element)."""
  if mask is None:
    return None
  return jax.vmap(lambda a, b: mask.allowed(a, b)[0])(q_idx, k_pos)


# ------------------------------------------------------------------------------------------
# Routed block-sparse attention.


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def tile_layout(sel: Array, nb: int, bq: int) -> tuple[Array, Array, Array]:
  """Rows sorted into per-block query tiles, for one (batch, kv head).

  ``sel`` int ``[N, S]`` (key blocks per row, ``-1``: none; distinct per row) ->
  ``slot_row`` int ``[ntiles, bq]`` (row in every tile slot, ``N`` = empty slot) and
  ``tile_blk`` int ``[ntiles]`` (the key block of every tile). A block's rows fill
  ``ceil(count / bq)`` tiles, so ``ntiles = ceil((N * S + nb * (bq - 1)) / bq)`` is static and
  a row appears at most once per tile. The third output is the number of tiles holding rows
  (they come first; the rest are empty).
  """
  n, s = sel.shape
  p = n * s
  cap = _round_up(p + nb * (bq - 1), bq)
  blk = jnp.where(sel >= 0, sel, nb).reshape(p).astype(jnp.int32)
  row = jnp.repeat(jnp.arange(n, dtype=jnp.int32), s)
  order = jnp.argsort(blk, stable=True)
  blk_s, row_s = blk[order], row[order]
  counts = jnp.zeros((nb + 1,), jnp.int32).at[blk].add(1)[:nb]
  padded = (counts + bq - 1) // bq * bq
  ends = jnp.cumsum(padded)
  starts = ends - padded
  first = jnp.cumsum(counts) - counts
  blk_c = jnp.minimum(blk_s, nb - 1)
  slot_s = jnp.where(blk_s < nb, starts[blk_c] + jnp.arange(p) - first[blk_c], cap)
  slot_row = jnp.full((cap,), n, jnp.int32).at[slot_s].set(row_s, mode="drop")
  tile_blk = jnp.searchsorted(ends, jnp.arange(cap // bq) * bq, side="right")
  return (slot_row.reshape(cap // bq, bq), jnp.minimum(tile_blk, nb - 1).astype(jnp.int32),
          ends[-1] // bq)


def _tile_logits(st, bi, rows, blk, q_ext, kb, kpos, qpos, mask):
  """Logits ``[bq, BK]`` (pre-softcap ``x`` and capped ``s``) and the visibility of one tile."""
  scale, softcap, tk, g, batch = st
  n = q_ext.shape[0] - 1
  qt, kt, kp = q_ext[rows], kb[blk], kpos[blk]
  x = jnp.einsum("qd,kd->qk", qt, kt, preferred_element_type=jnp.float32) * jnp.float32(scale)
  s = x if softcap is None else softcap * jnp.tanh(x / softcap)
  ok = (rows < n)[:, None] & (kp < tk)[None, :]
  if mask is not None:
    q_idx = qpos[jnp.minimum(rows, n - 1) // g]
    ok = ok & mask_for_batch(mask, bi, batch).allowed(q_idx, kp)[0]
  return s, ok


def _group_forward(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask):
  """One (batch, kv head): online softmax over the tiles (one tile per scan step; the rows of
  a tile are distinct, so the per-row state is gathered, merged and scattered back).
  Returns ``out [N + 1, Dv]`` float32 and ``lse [N + 1]`` (``+inf`` for rows with no key)."""
  n1 = q_ext.shape[0]

  def step(i, carry):
    m, l, acc = carry
    rows, blk = slot_row[i], tile_blk[i]
    s, ok = _tile_logits(st, bi, rows, blk, q_ext, kb, kpos, qpos, mask)
    s = jnp.where(ok, s, NEG)
    mt = jnp.max(s, axis=-1)
    p = jnp.where(ok, jnp.exp(s - mt[:, None]), 0.0)
    ot = jnp.einsum("qk,kd->qd", p.astype(vb.dtype), vb[blk],
                    preferred_element_type=jnp.float32)
    m_old, l_old, a_old = m[rows], l[rows], acc[rows]
    m_new = jnp.maximum(m_old, mt)
    a, b = jnp.exp(m_old - m_new), jnp.exp(mt - m_new)
    m = m.at[rows].set(m_new)
    l = l.at[rows].set(a * l_old + b * jnp.sum(p, axis=-1))
    acc = acc.at[rows].set(a[:, None] * a_old + b[:, None] * ot)
    return m, l, acc

  init = (jnp.full((n1,), NEG, jnp.float32), jnp.zeros((n1,), jnp.float32),
          jnp.zeros((n1, vb.shape[-1]), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, used, step, init)  # only the tiles holding rows
  out = acc / jnp.where(l > 0, l, 1.0)[:, None]
  lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)
  return out, lse


def _group_backward(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask, out, lse,
                    do):
  """Flash-style backward of one (batch, kv head): per tile, recompute the probabilities from
  ``lse`` and accumulate dq (rows), dk and dv (the tile's key block)."""
  scale, softcap = st[0], st[1]
  delta = jnp.sum(do * out, axis=-1)  # [N + 1]

  def step(i, carry):
    dq, dk, dv = carry
    rows, blk = slot_row[i], tile_blk[i]
    s, ok = _tile_logits(st, bi, rows, blk, q_ext, kb, kpos, qpos, mask)
    p = jnp.where(ok, jnp.exp(s - lse[rows][:, None]), 0.0)
    dot = do[rows]
    dp = jnp.einsum("qd,kd->qk", dot, vb[blk].astype(jnp.float32))
    ds = p * (dp - delta[rows][:, None])
    if softcap is not None:
      ds = ds * (1.0 - jnp.square(s / softcap))
    dx = ds * jnp.float32(scale)
    dq = dq.at[rows].add(jnp.einsum("qk,kd->qd", dx, kb[blk].astype(jnp.float32)))
    dk = dk.at[blk].add(jnp.einsum("qk,qd->kd", dx, q_ext[rows].astype(jnp.float32)))
    dv = dv.at[blk].add(jnp.einsum("qk,qd->kd", p, dot))
    return dq, dk, dv

  init = (jnp.zeros(q_ext.shape, jnp.float32), jnp.zeros(kb.shape, jnp.float32),
          jnp.zeros(vb.shape, jnp.float32))
  dq, dk, dv = jax.lax.fori_loop(0, used, step, init)
  return dq, dk, dv


def _vmapped(fn, n_batched):
  """vmap ``fn(st, bi, *batched[B, K, ...], *shared)`` over batch and kv heads."""
  def call(st, bi, *args):
    axes = (None, 0) + (0,) * n_batched + (None,) * (len(args) - n_batched)
    inner = (None, None) + (0,) * n_batched + (None,) * (len(args) - n_batched)
    return jax.vmap(jax.vmap(fn, in_axes=inner), in_axes=axes)(st, bi, *args)
  return call


def _int_zeros(tree):
  def z(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)
  return jax.tree.map(z, tree)


def _backward_args(st, bi, q_ext, kb, vb, slot_row, tile_blk, out, lse, do, used, kpos, qpos,
                   mask):
  return _group_backward(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask, out,
                         lse, do)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sparse(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask):
  return _sparse_fwd(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask)[0]


def _sparse_fwd(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask):
  out, lse = _vmapped(_group_forward, 5)(st, bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos,
                                         qpos, mask)
  return out, (bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask, out, lse)


def _sparse_bwd(st, res, do):
  bi, q_ext, kb, vb, slot_row, tile_blk, used, kpos, qpos, mask, out, lse = res
  dq, dk, dv = _vmapped(_backward_args, 8)(st, bi, q_ext, kb, vb, slot_row, tile_blk, out, lse,
                                           do.astype(jnp.float32), used, kpos, qpos, mask)
  return (_int_zeros(bi), dq.astype(q_ext.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype),
          _int_zeros(slot_row), _int_zeros(tile_blk), _int_zeros(used), _int_zeros(kpos),
          _int_zeros(qpos), _int_zeros(mask))


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


def routed_block_attention(q: Array, k: Array, v: Array, sel: Array, *, block_size: int,
                           scale: float, softcap: float | None = None,
                           mask: masks_lib.Mask | None = None, k_pos: Array | None = None,
                           q_pos: Array | None = None, q_tile: int | None = None) -> Array:
  """Softmax attention of every query row over the key blocks it selected.

  q ``[B, Tq, H, D]``, k/v ``[B, Tk, K, D]``; ``sel`` int ``[B, H, Tq, S]``: key-block ids in
  ``[0, ceil(Tk / block_size))`` (distinct per row) or ``-1`` (none). Key block ``j`` holds key
  slots ``[j * block_size, (j + 1) * block_size)`` of k/v (padded with zeros). ``k_pos``
  ``[ceil(Tk / block_size) * block_size]``: the original key index of each slot (default the
  slot itself; a value ``>= Tk`` marks padding), ``q_pos`` ``[Tq]`` the query index of each
  query; both are what ``mask.allowed`` sees (grid layouts permute the sequence into block
  order and pass the original indices here). ``q_tile``: rows per tile (default
  ``min(block_size, rows)``). Rows that see no key give zeros.

  A ``jax.custom_vjp``: the forward keeps a running (max, sum, output) per row across the
  tiles, the backward recomputes each tile's probabilities from the saved log-sum-exp
  (FlashAttention-2 style), so memory is O(rows * d) plus one tile. The loops visit only the
  tiles that hold rows (the most any (batch, kv head) needs).
  Returns ``[B, Tq, H, Dv]`` float32.
  """
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  g = h // kh
  n = tq * g
  nb = -(-tk // block_size)
  pad = nb * block_size - tk
  if pad:
    k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
  kb = k.reshape(b, nb, block_size, kh, d).transpose(0, 3, 1, 2, 4)  # [B, K, NB, BK, D]
  vb = v.reshape(b, nb, block_size, kh, -1).transpose(0, 3, 1, 2, 4)
  qr = q.reshape(b, tq, kh, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kh, n, d)  # row t*g+i
  q_ext = jnp.concatenate([qr, jnp.zeros((b, kh, 1, d), q.dtype)], axis=2)
  sel = sel.reshape(b, kh, g, tq, -1).transpose(0, 1, 3, 2, 4).reshape(b, kh, n, -1)
  kpos = (jnp.arange(nb * block_size, dtype=jnp.int32) if k_pos is None
          else jnp.asarray(k_pos, jnp.int32)).reshape(nb, block_size)
  qpos = jnp.arange(tq, dtype=jnp.int32) if q_pos is None else jnp.asarray(q_pos, jnp.int32)
  bq = q_tile or min(block_size, _round_up(n, 8))
  slot_row, tile_blk, used = jax.vmap(jax.vmap(lambda s_: tile_layout(s_, nb, bq)))(
      jax.lax.stop_gradient(sel))
  st = (float(scale), None if softcap is None else float(softcap), tk, g, b)
  # One trip count for every (batch, kv head): a batched loop bound would turn every step into
  # a select over the whole carry; the extra tiles of a group are empty (no effect).
  out = _sparse(st, jnp.arange(b, dtype=jnp.int32), q_ext, kb, vb, slot_row, tile_blk,
                jnp.max(used), kpos, qpos, mask)  # [B, K, N + 1, Dv]
  out = out[:, :, :n].reshape(b, kh, tq, g, -1).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, tq, h, -1)


def selection_mask(sel: Array, tk: int, block_size: int) -> Array:
  """Dense bool ``[B, H, Tq, Tk]``: key ``j`` is in a block ``sel`` names (references only)."""
  key_blk = jnp.arange(tk) // block_size
  return jnp.any(sel[..., None] == key_blk, axis=-2)


# ------------------------------------------------------------------------------------------
# Static grid layouts and gathered (grouped) attention.


def grid_coords(pos: Any, grid: tuple[int, ...], xp: Any = np) -> Any:
  """Row-major coordinates ``[..., len(grid)]`` of flat positions ``pos``."""
  strides = [math.prod(grid[a + 1:]) for a in range(len(grid))]
  return xp.stack([(pos // s) % n for s, n in zip(strides, grid)], axis=-1)


def gathered_attention(q: Array, k: Array, v: Array, q_idx: np.ndarray, k_idx: np.ndarray, *,
                       scale: float, softcap: float | None = None,
                       mask: masks_lib.Mask | None = None, extra_logits: Any = None,
                       return_parts: bool = False) -> Array:
  """Softmax attention inside static groups: group ``n``'s queries ``q_idx[n]`` attend to its
  keys ``k_idx[n]`` (``-1``: no key). q ``[B, Tq, H, D]``, k/v ``[B, Tk, K, D]``.

  ``q_idx`` int ``[NG, GQ]`` (each query in at most one group; queries in none give zeros),
  ``k_idx`` int ``[NG, GK]``. ``extra_logits(qg)``, with ``qg`` ``[B, NG, GQ, H, D]``, may add
  float32 logits ``[B, NG, H, GQ, GK]`` (relative terms, already scaled; added before
  soft-capping). The call's mask applies at the
  gathered positions. Work and memory O(NG * GQ * GK). Returns ``[B, Tq, H, Dv]`` float32, or
  with ``return_parts`` the per-group ``(out [B, NG, GQ, H, Dv], lse [B, NG, H, GQ])``.
  """
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  g = h // kh
  ng, gq = q_idx.shape
  kvalid = k_idx >= 0
  kk = np.where(kvalid, k_idx, tk)
  zero = lambda x: jnp.concatenate([x, jnp.zeros((b, 1) + x.shape[2:], x.dtype)], axis=1)
  qg = q[:, q_idx]  # [B, NG, GQ, H, D]
  kg, vg = zero(k)[:, kk], zero(v)[:, kk]  # [B, NG, GK, K, D]
  s = jnp.einsum("bnqkgd,bnjkd->bnkgqj", qg.reshape(b, ng, gq, kh, g, d), kg,
                 preferred_element_type=jnp.float32).reshape(b, ng, h, gq, -1)
  s = s * jnp.float32(scale)
  if extra_logits is not None:  # before soft-capping, as a score term
    s = s + extra_logits(qg)
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  ok = jnp.asarray(kvalid)[None, :, None, None, :]
  if mask is not None:
    al = jax.vmap(lambda a, c: mask.allowed(a, c))(jnp.asarray(q_idx), jnp.asarray(kk))
    ok = ok & jnp.swapaxes(al, 0, 1)[:, :, None]  # [Bm, NG, 1, GQ, GK]
  s = jnp.where(ok, s, NEG)
  m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  p = jnp.where(ok, jnp.exp(s - m), 0.0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  pn = (p / jnp.where(l > 0, l, 1.0)).reshape(b, ng, kh, g, gq, -1)
  o = jnp.einsum("bnkgqj,bnjkd->bnqkgd", pn.astype(v.dtype), vg,
                 preferred_element_type=jnp.float32).reshape(b, ng, gq, h, -1)
  if return_parts:
    lse = jnp.where(l[..., 0] > 0, m[..., 0] + jnp.log(jnp.where(l[..., 0] > 0, l[..., 0], 1.0)),
                    -jnp.inf)
    return o, lse
  out = jnp.zeros((b, tq + 1, h, o.shape[-1]), jnp.float32)
  flat = np.where(q_idx >= 0, q_idx, tq).reshape(-1)
  return out.at[:, flat].set(o.reshape(b, ng * gq, h, -1))[:, :tq]


def region_layout(grid: tuple[int, ...], region_size: Any) -> np.ndarray:
  """Flat indices ``[N_r, R]`` of every region's cells (regions and cells row-major)."""
  rs = (region_size,) * len(grid) if isinstance(region_size, (int, np.integer)) else tuple(
      region_size)
  if (len(rs) != len(grid) or any(isinstance(r, bool) or not isinstance(r, (int, np.integer))
                                  or r <= 0 or n % r for r, n in zip(rs, grid))):
    raise ValueError(f"region_size must be a positive int or one per grid axis dividing "
                     f"grid_shape {grid}, got {region_size!r}")
  idx = np.arange(math.prod(grid)).reshape(
      sum(((n // r, r) for n, r in zip(grid, rs)), ()))
  n = len(grid)
  idx = idx.transpose(list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2)))
  return idx.reshape(-1, math.prod(rs))


def run_length(cells: np.ndarray) -> int:
  """Length of the first run of consecutive flat indices of a region (its last-axis side)."""
  steps = np.diff(cells) != 1
  return int(np.argmax(steps)) + 1 if steps.any() else len(cells)


def visible_regions(mask: masks_lib.Mask, tq: int, tk: int, regions: np.ndarray) -> Array:
  """Bool ``[B|1, Tq, N_r]``: the mask shows the query every key of region ``r``. Regions are
  runs of ``seg`` consecutive cells (their last-axis side), so the mask's own tile summary at
  ``[1, seg]`` decides exactly (and hidden keys never enter a candidate region's mean key)."""
  seg = run_length(regions[0])
  segs = regions[:, ::seg] // seg  # [N_r, R / seg]
  summary = mask.block_summary(tq, tk, 1, seg)  # [Bm, Tq, Tk / seg]
  xp = np if isinstance(summary, np.ndarray) else jnp
  return jnp.asarray(xp.all(summary[..., segs] == masks_lib.FULL, axis=-1))
