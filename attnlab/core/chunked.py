"""Chunked attention in pure JAX: online softmax over (q-block, k-block) tiles.

The algorithm of "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness"
(arXiv 2205.14135) and "Self-attention Does Not Need O(n^2) Memory" (arXiv 2112.05682), written
with ``lax`` loops instead of a kernel:

* forward: for each q block, loop over the k blocks the mask summary does not mark EMPTY,
  keeping float32 running max / sum / output; the ``[Tq, Tk]`` matrix never exists;
* backward (``jax.custom_vjp``): recompute each tile's probabilities from the saved
  log-sum-exp in one pass over k blocks (FlashAttention-2 order): dk and dv accumulate per k
  block, dq and d bias in full-size float32 carries;
* GQA/MQA are computed grouped (no repeated K/V); ragged lengths are padded and masked.

The same loops serve sigmoid attention (``normalizer="sigmoid"``), which needs no statistics.
ALiBi slopes, scale and soft-cap are not differentiated (their cotangent is zero).

Autodiff: reverse mode only (``jax.grad`` / ``jax.vjp``). Forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.hessian``) is impossible through a ``jax.custom_vjp``, so the registry's
``supports`` refuses JVP-traced inputs (``forward_mode_reason``): ``implementation="auto"`` then
picks the dense "xla" path and an explicit ``implementation="chunked"`` raises a ValueError.
Two cases cannot be detected when the implementation is chosen: ``jax.linearize`` (traced
exactly like ``jax.grad``; evaluating the linear function raises JAX's "can't apply
forward-mode autodiff (jvp) to a custom_vjp function") and ``jax.jvp`` of a ``jax.jit``-ed
function (traced before the JVP). Pass ``implementation="xla"`` there.

Sharding: works under ``jit`` with inputs sharded over an explicit-axis mesh
(``jax.sharding.AxisType.Explicit``, ``jax.make_mesh``'s default), an auto mesh,
``jax.shard_map`` and ``jax.pmap``. Under an explicit mesh, batch and head dims stay sharded;
sequence and feature dims are gathered (``jax.sharding.reshard``) for the call, and the loop
carries are created with the inputs' sharding.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from attnlab.core import common
from attnlab.core import masks as masks_lib

Array = jax.Array

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256


class _Static(NamedTuple):
  """Hashable call constants."""
  scale: float
  softcap: float | None
  block_q: int
  block_k: int
  q_len: int
  kv_len: int
  normalizer: str  # "softmax" | "sigmoid"
  sigmoid_bias: float
  # closure-converted score_mod(s [B,H,bq,bk], batch, head, q_idx, kv_idx, *consts) or None
  score_mod: Any = None


def tile_table(summary: Any, nq: int, nk: int):
  """For every q block the indices of non-empty k blocks first, and their count.

  Returns ``(table [nq, nk], counts [nq], table_t [nk, nq], counts_t [nk])``; concrete numpy
  when the summary is static, else traced.
  """
  if summary is None:
    table = np.broadcast_to(np.arange(nk, dtype=np.int32), (nq, nk))
    table_t = np.broadcast_to(np.arange(nq, dtype=np.int32), (nk, nq))
    return table, np.full(nq, nk, np.int32), table_t, np.full(nk, nq, np.int32)
  xp = np if masks_lib.is_static(summary) else jnp
  nonempty = xp.any(summary != masks_lib.EMPTY, axis=0)  # any batch element needs the tile

  def order(ne):
    # Stable sort puts the non-empty indices first, in increasing order.
    if xp is np:
      idx = np.argsort(~ne, axis=1, kind="stable")
    else:
      idx = jnp.argsort(~ne, axis=1, stable=True)
    return idx.astype(xp.int32), ne.sum(axis=1).astype(xp.int32)

  table, counts = order(nonempty)
  table_t, counts_t = order(nonempty.T)
  return table, counts, table_t, counts_t


def combine_tile_states(summary: Any, extra: Any, batch: int, nq: int, nk: int,
                        name: str = "tile_states"):
  """``min(summary, extra)``: a mask's tile summary (``[B|1, nq, nk]`` or None = all FULL)
  restricted by data-dependent tile states ``extra`` (int ``[B|1, nq, nk]``, EMPTY / PARTIAL /
  FULL; numpy or traced), e.g. the blocks a router selected. numpy when both are static."""
  shape = tuple(np.shape(extra))
  if len(shape) != 3 or shape[1:] != (nq, nk) or shape[0] not in (1, batch):
    raise ValueError(f"{name} must give int [batch|1, n_q_tiles, n_k_tiles] = "
                     f"[{batch}|1, {nq}, {nk}], got shape {shape}")
  if summary is None:
    return extra
  xp = np if masks_lib.is_static(summary) and masks_lib.is_static(extra) else jnp
  return xp.minimum(xp.asarray(summary).astype(xp.int32), xp.asarray(extra).astype(xp.int32))


@jax.tree_util.register_pytree_node_class
class _BatchRow:
  """``mask`` as one batch element ``bi`` (traced) sees it: ``allowed`` -> ``[1, bq, bk]``
  (the per-batch-table loops run one batch element at a time)."""

  def __init__(self, mask, bi):
    self.mask, self.bi = mask, bi

  def allowed(self, q_pos, k_pos):
    a = self.mask.allowed(q_pos, k_pos)
    if a.shape[0] == 1:
      return a
    return jax.lax.dynamic_index_in_dim(a, self.bi, 0, keepdims=True)

  def tree_flatten(self):
    return (self.mask, self.bi), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    return cls(*children)


def _split_heads(x: Array, kh: int) -> Array:
  """``[B, T, H, D]`` -> ``[B, T, K, G, D]``."""
  b, t, h, d = x.shape
  return x.reshape(b, t, kh, h // kh, d)


def _pad_to(x: Array, axis: int, size: int) -> Array:
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


class _Tiles:
  """Per-tile logits and mask; shared by forward and both backward passes."""

  def __init__(self, st: _Static, mask, bias, alibi, q_offset, kh: int, g: int):
    self.st, self.mask, self.alibi, self.q_offset = st, mask, alibi, q_offset
    self.kh, self.g = kh, g
    self.bias = bias
    if bias is not None:
      bb, bh, btq, btk = bias.shape
      self.bias_full_q, self.bias_full_k = btq > 1, btk > 1
      # [Bb, K|1, G|1, Tq|1, Tk|1], padded to whole blocks.
      hshape = (kh, g) if bh > 1 else (1, 1)
      b5 = bias.reshape(bb, *hshape, btq, btk)
      if self.bias_full_q:
        b5 = _pad_to(b5, 3, _round_up(st.q_len, st.block_q))
      if self.bias_full_k:
        b5 = _pad_to(b5, 4, _round_up(st.kv_len, st.block_k))
      self.bias5 = b5

  def bias_tile(self, i, j):
    b5 = self.bias5
    if self.bias_full_q:
      b5 = jax.lax.dynamic_slice_in_dim(b5, i * self.st.block_q, self.st.block_q, axis=3)
    if self.bias_full_k:
      b5 = jax.lax.dynamic_slice_in_dim(b5, j * self.st.block_k, self.st.block_k, axis=4)
    return b5

  def logits(self, qi, kj, i, j):
    """qi ``[B,bq,K,G,D]``, kj ``[B,bk,K,D]`` -> (logits, capped, allowed) ``[B,K,G,bq,bk]``."""
    st = self.st
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qi, kj, preferred_element_type=jnp.float32)
    s = s * jnp.float32(st.scale)
    capped = common.apply_softcap(s, st.softcap)
    s = capped
    q_pos = i * st.block_q + jnp.arange(st.block_q)
    k_pos = j * st.block_k + jnp.arange(st.block_k)
    if self.bias is not None:
      s = s + self.bias_tile(i, j).astype(jnp.float32)
    if self.alibi is not None:
      ab = common.alibi_bias(self.alibi, q_pos + self.q_offset, k_pos)  # [B|1,H,bq,bk]
      s = s + ab.reshape(ab.shape[0], self.kh, self.g, st.block_q, st.block_k)
    # Padded keys and padded query rows are never visible (a score_mod may be NaN there).
    allowed = ((q_pos < st.q_len)[:, None] & (k_pos < st.kv_len)[None, :])[None, None, None]
    if self.mask is not None:
      allowed = allowed & self.mask.allowed(q_pos, k_pos)[:, None, None]
    return s, capped, allowed

  def mod(self, s, i, j, consts):
    """``score_mod`` on a tile ``s [B,K,G,bq,bk]`` (identity when there is none)."""
    st = self.st
    if st.score_mod is None:
      return s
    b = s.shape[0]
    # Positions of the padding past the ends are clamped to the last real ones, so a score_mod
    # reading tables by position never reads out of range (jnp.take's fill would give NaN,
    # and 0 * NaN in the backward would poison dq / dk / dv and the captured arrays).
    q_pos = jnp.minimum(i * st.block_q + jnp.arange(st.block_q), st.q_len - 1) + self.q_offset
    k_pos = jnp.minimum(j * st.block_k + jnp.arange(st.block_k), st.kv_len - 1)
    idx = common.score_mod_indices(b, self.kh * self.g, q_pos, k_pos)
    s4 = s.reshape(b, self.kh * self.g, st.block_q, st.block_k)
    return st.score_mod(s4, *idx, *consts).reshape(s.shape)

  def dlogits_to_raw(self, ds, capped):
    """Chain rule through soft-capping: d tanh = 1 - tanh^2."""
    if self.st.softcap is None:
      return ds
    t = capped / self.st.softcap
    return ds * (1.0 - t * t)

  def reduce_to_bias(self, ds):
    """Sum a ``[B,K,G,bq,bk]`` tile cotangent down to the bias tile's broadcast shape."""
    b5 = self.bias5
    axes = tuple(a for a, n in enumerate(b5.shape[:3]) if n == 1 and ds.shape[a] != 1)
    out = ds.sum(axis=axes, keepdims=True) if axes else ds
    if not self.bias_full_q:
      out = out.sum(axis=3, keepdims=True)
    if not self.bias_full_k:
      out = out.sum(axis=4, keepdims=True)
    return out


FORWARD_MODE_REASON = ("forward-mode autodiff (jax.jvp) is not supported by this custom_vjp "
                       "implementation; use implementation='xla'")


def _is_jvp_traced(x, depth: int = 0) -> bool:
  """Whether ``x`` is a JVP tracer, possibly under vmap / shard_map tracers (``.val``)."""
  if not isinstance(x, jax.core.Tracer) or depth > 16:
    return False
  if isinstance(x, jax.interpreters.ad.JVPTracer):
    return True
  return any(_is_jvp_traced(getattr(x, name, None), depth + 1) for name in ("val", "primal"))


def forward_mode_reason(*trees) -> str | None:
  """``FORWARD_MODE_REASON`` when any leaf is traced by ``jax.jvp`` (also ``jax.jacfwd``),
  else None. For the ``supports`` of custom_vjp implementations ("chunked", "pallas")."""
  if any(_is_jvp_traced(leaf) for leaf in jax.tree.leaves(trees)):
    return FORWARD_MODE_REASON
  return None


def _varying_axes(*trees) -> tuple:
  """Mesh axes over which any input varies inside ``shard_map`` (empty outside it)."""
  axes = set()
  for leaf in jax.tree.leaves(trees):
    aval = jax.typeof(leaf)
    mat = getattr(aval, "manual_axis_type", None)  # newer JAX
    axes |= set(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())
  return tuple(sorted(axes))


def _vary(tree, axes: tuple):
  """Mark loop-carry initial values as varying like the loop body's outputs (shard_map)."""
  if not axes:
    return tree

  def vary(x):
    missing = tuple(a for a in axes if a not in _varying_axes(x))
    return jax.lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(vary, tree)


def _explicit_spec(x) -> tuple | None:
  """``x``'s sharding spec padded to its rank when an explicit mesh axis shards it, else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None or all(p is None for p in spec):
    return None
  return tuple(spec) + (None,) * (jnp.ndim(x) - len(spec))


def _is_explicit(*trees) -> bool:
  """Whether any input is sharded over an explicit-axis mesh (``jax.sharding.AxisType.Explicit``,
  the default of ``jax.make_mesh``). Under ``jit`` its type then carries the sharding."""
  return any(_explicit_spec(leaf) is not None for leaf in jax.tree.leaves(trees))


def _zeros(shape, dtype, like, dims):
  """Zeros whose dim ``n`` is sharded like ``like``'s dim ``dims[n]`` (None: unsharded) under an
  explicit-axis mesh; plain zeros otherwise."""
  spec = _explicit_spec(like)
  if spec is None:
    return jnp.zeros(shape, dtype)
  return jnp.zeros(shape, dtype, out_sharding=jax.sharding.PartitionSpec(
      *(None if d is None else spec[d] for d in dims)))


def _keep_sharded(x, dims):
  """Under an explicit-axis mesh, gather every dim of ``x`` not in ``dims`` (the loops slice
  the sequence and contract the feature dims; batch and heads stay sharded)."""
  spec = _explicit_spec(x)
  if spec is None or all(p is None for n, p in enumerate(spec) if n not in dims):
    return x
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec(
      *(p if n in dims else None for n, p in enumerate(spec))))


def _fit_carry(step, init, explicit: bool):
  """Reshard loop-carry initial values to the sharding the loop body gives them.

  Under an explicit-axis mesh an array's type includes its sharding, and ``lax`` loops require
  the carry's input and output types to be equal; zeros created from shapes are replicated
  while the body's outputs follow the (e.g. batch-sharded) inputs. ``step(index, carry)`` is
  the loop body (returning the new carry); it is only traced abstractly (``jax.eval_shape``).
  """
  if not explicit:
    return init
  norm = lambda x, spec: tuple(spec or ()) + (None,) * (len(x.shape) - len(spec or ()))
  for _ in range(3):  # a sharding can flow through the carry; settles in one or two rounds
    out = jax.eval_shape(step, jax.ShapeDtypeStruct((), jnp.int32), init)
    pairs = list(zip(jax.tree.leaves(init), jax.tree.leaves(out)))
    want = [norm(o, getattr(o.sharding, "spec", None)) for _, o in pairs]
    have = [norm(x, jax.typeof(x).sharding.spec) for x, _ in pairs]
    if want == have:
      return init
    init = jax.tree.map(
        lambda x, o: jax.sharding.reshard(x, jax.sharding.PartitionSpec(
            *norm(o, getattr(o.sharding, "spec", None)))), init, out)
  return init


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _block(x, i, size, axis=1):
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def _forward(st: _Static, q, k, v, bias, alibi, q_offset, mask, table, counts, consts):
  """Returns out ``[B, Tq_pad, K, G, Dv]`` (input dtype) and lse ``[B, K, G, Tq_pad]``."""
  b, _, kh, g, _ = q.shape
  dv = v.shape[-1]
  tiles = _Tiles(st, mask, bias, alibi, q_offset, kh, g)
  nq = q.shape[1] // st.block_q
  sig_bias = jnp.float32(st.sigmoid_bias)
  axes = _varying_axes(q, k, v, bias, alibi, q_offset, mask, consts)
  explicit = _is_explicit(q, k, v, bias, alibi, q_offset, mask, consts)

  tq_pad = q.shape[1]

  def q_block(i, carry):
    out_buf, lse_buf = carry
    qi = _block(q, i, st.block_q)
    o0 = _zeros((b, kh, g, st.block_q, dv), jnp.float32, q, (0, 2, 3, None, None))
    l0 = _zeros((b, kh, g, st.block_q), jnp.float32, q, (0, 2, 3, None))
    m0 = l0 - jnp.inf

    def body(t, carry):
      o, m, l = carry
      j = table[i, t]
      kj, vj = _block(k, j, st.block_k), _block(v, j, st.block_k)
      s, _, allowed = tiles.logits(qi, kj, i, j)
      s = tiles.mod(s, i, j, consts)
      if st.normalizer == "sigmoid":
        p = jnp.where(allowed, jax.nn.sigmoid(s + sig_bias), 0.0)
        o = o + jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(v.dtype), vj,
                           preferred_element_type=jnp.float32)
        return o, m, l
      s = jnp.where(allowed, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(axis=-1))
      m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = alpha * l + p.sum(axis=-1)
      o = alpha[..., None] * o + jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(v.dtype), vj,
                                            preferred_element_type=jnp.float32)
      return o, m_new, l

    init = _fit_carry(body, _vary((o0, m0, l0), axes), explicit)
    o, m, l = jax.lax.fori_loop(0, counts[i], body, init)
    if st.normalizer == "sigmoid":
      lse = l
    else:
      empty = l == 0.0
      o = o / jnp.where(empty, 1.0, l)[..., None]
      lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
    # Write the block in place in the final layouts (no stacked copy to transpose later).
    o = jnp.transpose(o, (0, 3, 1, 2, 4)).astype(out_buf.dtype)  # [B, bq, K, G, Dv]
    out_buf = jax.lax.dynamic_update_slice_in_dim(out_buf, o, i * st.block_q, axis=1)
    lse_buf = jax.lax.dynamic_update_slice_in_dim(lse_buf, lse, i * st.block_q, axis=3)
    return out_buf, lse_buf

  out0 = _zeros((b, tq_pad, kh, g, dv), q.dtype, q, (0, 1, 2, 3, None))
  lse0 = _zeros((b, kh, g, tq_pad), jnp.float32, q, (0, 2, 3, 1))
  init = _fit_carry(q_block, _vary((out0, lse0), axes), explicit)
  return jax.lax.fori_loop(0, nq, q_block, init)


def _backward(st: _Static, res, do):
  (q, k, v, bias, alibi, q_offset, mask, table, counts, table_t, counts_t, consts, out,
   lse) = res
  b, tq_pad, kh, g, d = q.shape
  dv_dim = v.shape[-1]
  nq, nk = tq_pad // st.block_q, k.shape[1] // st.block_k
  tiles = _Tiles(st, mask, bias, alibi, q_offset, kh, g)
  sig_bias = jnp.float32(st.sigmoid_bias)
  axes = _varying_axes(q, k, v, bias, alibi, q_offset, mask, consts, do)
  explicit = _is_explicit(q, k, v, bias, alibi, q_offset, mask, consts, do)
  if st.normalizer == "softmax":
    # delta_i = rowsum(dO * O), [B, K, G, Tq_pad] float32 (fused; no full-size product kept).
    delta = jnp.einsum("bqhgd,bqhgd->bhgq", do.astype(jnp.float32), out.astype(jnp.float32))
  else:
    delta = jnp.zeros(lse.shape, jnp.float32)
  rows = lambda x, i: _block(x, i, st.block_q, axis=3)  # [B, K, G, bq] slice of row stats

  def probs_and_dlogits(qi, kj, vj, do_i, lse_i, delta_i, i, j):
    """(p, d logits before score_mod, capped logits, d consts of this tile or None)."""
    s, capped, allowed = tiles.logits(qi, kj, i, j)
    mod_vjp = None
    if st.score_mod is not None:
      def mod(s_, *fc):  # differentiated w.r.t. the floating consts only
        it = iter(fc)
        return tiles.mod(s_, i, j, [next(it) if f else c for f, c in zip(is_float, consts)])
      s, mod_vjp = jax.vjp(mod, s, *float_consts)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", do_i, vj, preferred_element_type=jnp.float32)
    if st.normalizer == "sigmoid":
      p = jnp.where(allowed, jax.nn.sigmoid(s + sig_bias), 0.0)
      ds = dp * p * (1.0 - p)
    else:
      p = jnp.where(allowed, jnp.exp(s - lse_i[..., None]), 0.0)
      ds = p * (dp - delta_i[..., None])
    dconsts = None
    if mod_vjp is not None:
      ds, *dconsts = mod_vjp(ds)
    return p, ds, capped, dconsts

  # One pass over k blocks (FlashAttention-2 order): dk, dv accumulate in the inner loop over
  # the q blocks that see this k block; dq and d bias accumulate in full-size carries.
  dq0 = _vary(jnp.zeros_like(q, jnp.float32), axes)
  dbias0 = None if bias is None else _vary(jnp.zeros_like(tiles.bias5, jnp.float32), axes)
  is_float = [jnp.issubdtype(jnp.asarray(c).dtype, jnp.inexact) for c in consts]
  float_consts = [c for f, c in zip(is_float, consts) if f]
  # Accumulated over tiles in float32 (a bf16 table's gradient sums thousands of tiles).
  dconsts0 = _vary(tuple(jnp.zeros(jnp.shape(c), jnp.float32) for c in float_consts), axes)

  def k_block(carry, j):
    dq_all, dbias, dconsts = carry
    kj, vj = _block(k, j, st.block_k), _block(v, j, st.block_k)

    def body(t, carry):
      dk, dv, dq_all, dbias, dconsts = carry
      i = table_t[j, t]
      qi = _block(q, i, st.block_q)
      do_i = _block(do, i, st.block_q)
      p, ds, capped, dc = probs_and_dlogits(qi, kj, vj, do_i, rows(lse, i), rows(delta, i), i,
                                            j)
      if dc is not None:
        dconsts = tuple(a + b.astype(a.dtype) for a, b in zip(dconsts, dc))
      dv = dv + jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(do.dtype), do_i,
                           preferred_element_type=jnp.float32)
      if dbias is not None:
        red = tiles.reduce_to_bias(ds)
        start = [0, 0, 0, i * st.block_q if tiles.bias_full_q else 0,
                 j * st.block_k if tiles.bias_full_k else 0]
        cur = jax.lax.dynamic_slice(dbias, start, red.shape)
        dbias = jax.lax.dynamic_update_slice(dbias, cur + red, start)
      ds_raw = tiles.dlogits_to_raw(ds, capped)
      dk = dk + jnp.einsum("bhgqk,bqhgd->bkhd", ds_raw, qi,
                           preferred_element_type=jnp.float32)
      dq_i = jnp.einsum("bhgqk,bkhd->bqhgd", ds_raw, kj, preferred_element_type=jnp.float32)
      dq_all = jax.lax.dynamic_update_slice_in_dim(
          dq_all, _block(dq_all, i, st.block_q) + dq_i, i * st.block_q, axis=1)
      return dk, dv, dq_all, dbias, dconsts

    dk0 = jnp.zeros((b, st.block_k, kh, d), jnp.float32)
    dv0 = jnp.zeros((b, st.block_k, kh, dv_dim), jnp.float32)
    init = _fit_carry(body, (*_vary((dk0, dv0), axes), dq_all, dbias, dconsts), explicit)
    dk, dv, dq_all, dbias, dconsts = jax.lax.fori_loop(0, counts_t[j], body, init)
    return (dq_all, dbias, dconsts), (dk * st.scale, dv)

  init = _fit_carry(lambda j, c: k_block(c, j)[0], (dq0, dbias0, dconsts0), explicit)
  (dq, dbias, dconsts), (dk, dv) = jax.lax.scan(k_block, init, jnp.arange(nk))
  dq = (dq * st.scale).astype(q.dtype)
  dk = jnp.swapaxes(dk, 0, 1).reshape(k.shape).astype(k.dtype)
  dv = jnp.swapaxes(dv, 0, 1).reshape(v.shape).astype(v.dtype)
  if dbias is not None:
    dbias = dbias[..., : bias.shape[-2] if tiles.bias_full_q else 1,
                  : bias.shape[-1] if tiles.bias_full_k else 1]
    dbias = dbias.reshape(bias.shape).astype(bias.dtype)
  return dq, dk, dv, dbias, dconsts


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, bias, alibi, q_offset, mask, table, counts, table_t, counts_t, consts):
  out, _ = _forward(st, q, k, v, bias, alibi, q_offset, mask, table, counts, consts)
  return out


def _flash_fwd(st, q, k, v, bias, alibi, q_offset, mask, table, counts, table_t, counts_t,
               consts):
  out, lse = _forward(st, q, k, v, bias, alibi, q_offset, mask, table, counts, consts)
  res = (q, k, v, bias, alibi, q_offset, mask, table, counts, table_t, counts_t, consts, out,
         lse)
  return out, res


def _flash_bwd(st, res, do):
  dq, dk, dv, dbias, dconsts = _backward(st, res, do)
  zeros = lambda x: None if x is None else jax.tree.map(jnp.zeros_like, x)
  alibi, q_offset, mask = res[4], res[5], res[6]
  it = iter(dconsts)  # the floating consts' gradients, in order; float0 for the others
  dconsts = tuple(next(it).astype(jnp.asarray(c).dtype)
                  if jnp.issubdtype(jnp.asarray(c).dtype, jnp.inexact) else _int_zeros(c)
                  for c in res[11])
  return (dq, dk, dv, dbias, zeros(alibi), _int_zeros(q_offset), _int_zeros(mask), None, None,
          None, None, dconsts)


def _int_zeros(tree):
  """Cotangents for integer/bool leaves are float0 zeros."""
  def z(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)
  return jax.tree.map(z, tree)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _per_batch_flash(st: _Static, q, k, v, q_offset, mask, states, nq: int, nk: int):
  """``_flash`` with a table per batch element (``states [B, nq, nk]``), one element at a
  time (``lax.map``: a sequential loop, so every element keeps its own trip counts)."""
  states = jnp.broadcast_to(jnp.asarray(states, jnp.int32), (q.shape[0], nq, nk))

  def one(args):
    bi, qb, kb, vb, sb = args
    table, counts, table_t, counts_t = tile_table(sb[None], nq, nk)
    m = None if mask is None else _BatchRow(mask, bi)
    return _flash(st, qb[None], kb[None], vb[None], None, None, q_offset, m, table, counts,
                  table_t, counts_t, ())[0]

  return jax.lax.map(one, (jnp.arange(q.shape[0], dtype=jnp.int32), q, k, v, states))


class ConvertedScoreMod(NamedTuple):
  """A score_mod already closure-converted (``convert_score_mod``) for tiles
  ``[batch, heads, block_q, block_k]``; ``chunked_attention`` takes it as ``score_mod`` (with
  the same tile sizes) and differentiates ``consts``. Used by the Pallas wrapper for the
  captured arrays' gradients."""
  fn: Any
  consts: tuple
  block_q: int
  block_k: int


def convert_score_mod(score_mod: Any, batch: int, heads: int, block_q: int,
                      block_k: int) -> tuple[Any, tuple]:
  """``score_mod`` closure-converted for score tiles ``[batch, heads, block_q, block_k]``.

  Returns ``(fn, consts)``: ``fn(s, b, h, q_idx, kv_idx, *consts)`` and every array it closed
  over (``common.hoist_constants``), which become explicit inputs of the custom_vjp: the
  floating ones get gradients, the integer ones (document ids) float0 zeros; none stays a
  closed-over tracer (which fails under ``jit(grad)`` inside ``scan``/``checkpoint``).
  ``(None, ())`` for None.
  """
  if score_mod is None:
    return None, ()
  if isinstance(score_mod, ConvertedScoreMod):
    if (score_mod.block_q, score_mod.block_k) != (block_q, block_k):
      raise ValueError(f"a ConvertedScoreMod for tiles {(score_mod.block_q, score_mod.block_k)} "
                       f"cannot run on tiles {(block_q, block_k)}")
    return score_mod.fn, tuple(score_mod.consts)
  common.check_score_mod(score_mod)
  s0 = jnp.zeros((batch, heads, block_q, block_k), jnp.float32)
  idx0 = common.score_mod_indices(batch, heads, jnp.zeros(block_q, jnp.int32),
                                  jnp.zeros(block_k, jnp.int32))
  return common.hoist_constants(
      lambda s, *idx: common.call_score_mod(score_mod, s, idx), s0, *idx0)


def chunked_attention(
    q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"], v: Float[Array, "B Tk K Dv"], *,
    mask: masks_lib.Mask | None = None, bias: Float[ArrayLike, "#B #H #Tq #Tk"] | None = None,
    scale: float | None = None, softcap: float | None = None,
    alibi_slopes: Float[ArrayLike, "H"] | Float[ArrayLike, "#B H"] | None = None,
    q_offset: Any = 0, head_mask: Float[ArrayLike, "H"] | Float[ArrayLike, "#B H"] | None = None,
    return_weights: bool = False, normalizer: str = "softmax", sigmoid_bias: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K, score_mod: Any = None,
    tile_states: Any = None,
) -> Float[Array, "B Tq H Dv"] | tuple[Float[Array, "B Tq H Dv"], Float[Array, "B H Tq Tk"]]:
  """Memory-efficient attention; same contract as ``softmax_attention``.

  q ``[B,Tq,H,D]``, k ``[B,Tk,K,D]``, v ``[B,Tk,K,Dv]`` -> ``[B,Tq,H,Dv]``. ``block_q`` and
  ``block_k`` are tile sizes (clipped to the lengths). ``normalizer`` is ``"softmax"`` or
  ``"sigmoid"``. ``score_mod(score, batch, head, q_idx, kv_idx) -> score`` is applied per tile
  to the logits after bias and ALiBi (see ``attnlab.attention``); the arrays it closes over get
  gradients (``convert_score_mod``). With ``return_weights=True`` the weights are recomputed
  densely (analysis).

  ``tile_states(block_q, block_k, n_q_tiles, n_k_tiles)`` -> int ``[B|1, nq, nk]``
  (EMPTY / PARTIAL / FULL, numpy or traced): data-dependent tile states (e.g. MoBA's selected
  blocks) combined with the mask's summary by ``min``; the loops skip the EMPTY tiles. With a
  batch axis of size ``B`` every batch element gets its own table and the loops run one batch
  element at a time (``lax.map``); that mode takes no bias, ALiBi or score_mod. A tile the
  states mark PARTIAL or FULL is computed with the mask elementwise, so the states only
  remove tiles.
  """
  # The dense references register this function as their "chunked" implementation, so they
  # are imported here rather than at module level (no import cycle).
  from attnlab.core.mechanisms import sigmoid as sigmoid_lib  # pylint: disable=g-import-not-at-top
  from attnlab.core.mechanisms import softmax as softmax_lib  # pylint: disable=g-import-not-at-top
  if normalizer not in ("softmax", "sigmoid"):
    raise ValueError(f"normalizer must be 'softmax' or 'sigmoid', got {normalizer!r}")
  for name, val in (("block_q", block_q), ("block_k", block_k)):
    if not isinstance(val, (int, np.integer)) or val <= 0:
      raise ValueError(f"{name} must be a positive int, got {val!r}")
  mask, bias, scale, alibi, head_mask_ = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                             alibi_slopes, head_mask)
  b, tq, h, _ = q.shape
  tk, kh = k.shape[1], k.shape[2]
  bq, bk = min(block_q, tq), min(block_k, tk)
  nq, nk = -(-tq // bq), -(-tk // bk)
  summary = None if mask is None else mask.block_summary(tq, tk, bq, bk)
  per_batch = False
  if tile_states is not None:
    if return_weights:  # the dense recomputation below knows the mask only
      raise ValueError("chunked_attention: return_weights=True cannot be combined with "
                       "tile_states (the weights would ignore the removed tiles)")
    extra = tile_states(bq, bk, nq, nk)
    summary = combine_tile_states(summary, extra, b, nq, nk)
    per_batch = np.shape(extra)[0] > 1
    if per_batch and (bias is not None or alibi is not None or score_mod is not None):
      raise ValueError("chunked_attention: per-batch tile_states ([B, nq, nk] with B > 1) "
                       "take no bias, alibi_slopes or score_mod")
  if not per_batch:
    table, counts, table_t, counts_t = tile_table(summary, nq, nk)
  mod_fn, consts = convert_score_mod(score_mod, b, h, bq, bk)
  st = _Static(scale=float(scale), softcap=None if softcap is None else float(softcap),
               block_q=bq, block_k=bk, q_len=tq, kv_len=tk, normalizer=normalizer,
               sigmoid_bias=sigmoid_lib.default_sigmoid_bias(tk, sigmoid_bias),
               score_mod=mod_fn)
  q, k, v = (_keep_sharded(x, (0, 2)) for x in (q, k, v))
  if bias is not None:
    bias = _keep_sharded(bias, (0, 1))
  qp = _pad_to(_split_heads(q, kh), 1, nq * bq)
  kp, vp = _pad_to(k, 1, nk * bk), _pad_to(v, 1, nk * bk)
  if per_batch:
    out = _per_batch_flash(st, qp, kp, vp, jnp.asarray(q_offset), mask, summary, nq, nk)
  else:
    out = _flash(st, qp, kp, vp, bias, alibi, jnp.asarray(q_offset), mask, jnp.asarray(table),
                 jnp.asarray(counts), jnp.asarray(table_t), jnp.asarray(counts_t), consts)
  out = out[:, :tq].reshape(b, tq, h, v.shape[-1])
  out = common.apply_head_mask(out, head_mask_)
  if not return_weights:
    return out
  ref = sigmoid_lib.sigmoid_attention if normalizer == "sigmoid" else (
      softmax_lib.softmax_attention)
  extra = {"sigmoid_bias": sigmoid_bias} if normalizer == "sigmoid" else {}
  _, weights = ref(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                   alibi_slopes=alibi_slopes, q_offset=q_offset, return_weights=True,
                   score_mod=score_mod, **extra)
  return out, weights
