"""Attention masks as values, not arrays.

A mask answers three questions without ever building a dense ``[q_len, kv_len]`` array
unless asked:

* ``mask.allowed(q_pos, k_pos)`` -> bool ``[B|1, len(q_pos), len(k_pos)]``: the elementwise
  mask for a set of query and key positions (used by the dense reference on all positions, and
  by the chunked path and kernels on one tile at a time).
* ``mask.block_summary(q_len, kv_len, block_q, block_k)`` -> int32 ``[B|1, nq, nk]`` with
  ``EMPTY`` (0), ``PARTIAL`` (1), ``FULL`` (2) per (q-block, k-block) tile. Masks that depend
  only on static numbers (causal, window, static prefix) return a concrete ``numpy`` array, so
  callers can skip tiles at trace time; data-dependent masks (segment ids, valid lengths) return
  a ``jax.Array``.
* ``mask.dense(q_len, kv_len)`` -> bool ``[B|1, q_len, kv_len]`` (reference path only).

Masks compose: ``a & b`` keeps a pair when both keep it, ``a | b`` when either does. For the
block summary, AND is the elementwise minimum and OR the maximum of the three-valued code
(empty < partial < full), which is exact for full/empty tiles and conservative otherwise.

Positions: query ``i`` sits at absolute position ``i + q_offset`` (``q_offset`` lets a decode
step with a KV cache line its queries up with the end of the keys).

Before use, ``attnlab.attention`` validates a mask against the call
(``mask.check_shape(batch, q_len, kv_len)``: segment ids, lengths and dense arrays must match the
call's shapes) and aligns its positions with the call's ``q_offset``
(``mask.align_q_offset(q_offset)``: a mask built with ``q_offset=0`` follows the call's
``q_offset``; one built with a different non-zero ``q_offset`` is refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2

Array = Any  # jax.Array | np.ndarray


def _num_blocks(n: int, block: int) -> int:
  return -(-n // block)


def _block_bounds(n: int, block: int) -> tuple[np.ndarray, np.ndarray]:
  """First and last (inclusive) position of every block of ``block`` positions in ``[0, n)``."""
  starts = np.arange(_num_blocks(n, block)) * block
  ends = np.minimum(starts + block, n) - 1
  return starts, ends


def _is_concrete(x: Any) -> bool:
  return isinstance(x, (np.ndarray, np.generic, int, float, bool))


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _is_zero(x: Any) -> bool:
  """True when ``x`` is known (not traced) to be 0."""
  return not _is_traced(x) and bool(np.all(np.asarray(x) == 0))


def _resolve_q_offset(mask: "Mask", own: Any, call: Any) -> Any:
  """The q_offset ``mask`` (whose own offset is ``own``) must use in a call with ``call``.

  A call-level offset of 0 leaves the mask as built; a mask built with 0 follows a non-zero
  call offset; two different non-zero offsets are an error. Traced offsets that are not the
  same value cannot be compared and the mask keeps its own.
  """
  if own is call or _is_zero(call):
    return own
  if _is_zero(own):
    return call
  if _is_traced(own) or _is_traced(call):
    return own
  if not np.array_equal(np.asarray(own), np.asarray(call)):
    raise ValueError(
        f"{mask!r} was built with q_offset={np.asarray(own).tolist()} but attention was called "
        f"with q_offset={np.asarray(call).tolist()}; build the mask with q_offset=0 (it then "
        "follows the call's q_offset) or with the call's q_offset")
  return own


def _batch_spec(batch: int) -> str:
  return str(batch) if batch == 1 else f"{batch} or 1"


def _shape_error(mask: "Mask", what: str, expected: str, got: Any) -> ValueError:
  return ValueError(f"{type(mask).__name__}: {what} must have shape {expected} for this call, "
                    f"got shape {tuple(got)}")


class Mask:
  """Base class. Subclasses implement ``allowed`` and ``block_summary``."""

  def allowed(self, q_pos: Array, k_pos: Array) -> Array:
    """Bool ``[B|1, len(q_pos), len(k_pos)]``: may query ``q_pos[i]`` see key ``k_pos[j]``."""
    raise NotImplementedError

  def block_summary(self, q_len: int, kv_len: int, block_q: int, block_k: int) -> Array:
    """Int32 ``[B|1, ceil(q_len/block_q), ceil(kv_len/block_k)]`` of EMPTY/PARTIAL/FULL."""
    raise NotImplementedError

  def dense(self, q_len: int, kv_len: int) -> jax.Array:
    """Bool ``[B|1, q_len, kv_len]``; only the reference path should call this."""
    return jnp.asarray(self.allowed(jnp.arange(q_len), jnp.arange(kv_len)))

  @property
  def batch_size(self) -> int | None:
    """Batch size the mask is tied to, or None when it broadcasts over the batch."""
    return None

  def check_shape(self, batch: int, q_len: int, kv_len: int) -> None:
    """Raise ValueError unless the mask's arrays fit a call with these sizes.

    Called by ``attnlab.attention`` before dispatch. Masks without arrays accept any shape.
    """
    del batch, q_len, kv_len

  def align_q_offset(self, q_offset: Any) -> "Mask":
    """The mask to use in a call whose queries start at ``q_offset``.

    Masks with a ``q_offset`` field built with 0 take the call's ``q_offset``; one built with
    a different non-zero value raises ValueError. Masks without positions return themselves.
    """
    del q_offset
    return self

  def __and__(self, other: "Mask") -> "Mask":
    return And(self, _check_mask(other, "other"))

  def __or__(self, other: "Mask") -> "Mask":
    return Or(self, _check_mask(other, "other"))


def _check_mask(m: Any, name: str) -> Mask:
  if not isinstance(m, Mask):
    raise TypeError(f"{name} must be an attnlab.masks.Mask, got {type(m).__name__}")
  return m


# ----------------------------------------------------------------------------------------------
# Static masks: depend only on positions and Python numbers.


@dataclasses.dataclass(frozen=True, eq=False)
class LocalMask(Mask):
  """Query at absolute position p sees keys in ``[p - left, p + right]``.

  ``left=None`` / ``right=None`` mean unbounded on that side. ``CausalMask`` is
  ``LocalMask(left=None, right=0)``; a sliding window of size W is ``left=W-1, right=0``.
  """

  left: int | None = None
  right: int | None = None
  q_offset: int = 0

  def __post_init__(self):
    for name in ("left", "right"):
      val = getattr(self, name)
      if val is not None and (not isinstance(val, (int, np.integer)) or val < 0):
        raise ValueError(f"{name} must be a non-negative int or None, got {val!r}")
    if jnp.ndim(self.q_offset) != 0:
      raise ValueError(f"q_offset must be a scalar, got shape {jnp.shape(self.q_offset)}")

  def __repr__(self):
    off = self.q_offset if _is_concrete(self.q_offset) else type(self.q_offset).__name__
    return f"LocalMask(left={self.left}, right={self.right}, q_offset={off})"

  def align_q_offset(self, q_offset):
    off = _resolve_q_offset(self, self.q_offset, q_offset)
    return self if off is self.q_offset else dataclasses.replace(self, q_offset=off)

  def allowed(self, q_pos, k_pos):
    qp = jnp.asarray(q_pos)[:, None] + self.q_offset
    kp = jnp.asarray(k_pos)[None, :]
    ok = jnp.ones(qp.shape[:1] + kp.shape[1:], bool)
    if self.left is not None:
      ok &= kp >= qp - self.left
    if self.right is not None:
      ok &= kp <= qp + self.right
    return ok[None]

  def block_summary(self, q_len, kv_len, block_q, block_k):
    # A traced q_offset (decoding with a KV cache) gives a traced summary.
    xp = np if _is_concrete(self.q_offset) else jnp
    qs, qe = _block_bounds(q_len, block_q)
    ks, ke = _block_bounds(kv_len, block_k)
    qs, qe = qs[:, None] + self.q_offset, qe[:, None] + self.q_offset
    ks, ke = xp.asarray(ks[None, :]), xp.asarray(ke[None, :])
    empty = xp.zeros((qs.shape[0], ks.shape[1]), bool)
    full = xp.ones_like(empty)
    if self.left is not None:
      empty |= ke < qs - self.left  # every key is left of every query's window
      full &= ks >= qe - self.left
    if self.right is not None:
      empty |= ks > qe + self.right
      full &= ke <= qs + self.right
    out = xp.where(empty, EMPTY, xp.where(full, FULL, PARTIAL)).astype(xp.int32)
    return out[None]


def CausalMask(q_offset: int = 0) -> LocalMask:
  """Key j visible to query i iff ``j <= i + q_offset`` (top-left aligned, as jax.nn)."""
  return LocalMask(left=None, right=0, q_offset=q_offset)


def SlidingWindowMask(left: int | None, right: int | None = 0, q_offset: int = 0) -> LocalMask:
  """Keys within ``left`` positions before and ``right`` after the query (inclusive)."""
  return LocalMask(left=left, right=right, q_offset=q_offset)


@dataclasses.dataclass(frozen=True, eq=False)
class FullMask(Mask):
  """Every pair allowed (useful as a neutral element)."""

  def allowed(self, q_pos, k_pos):
    return jnp.ones((1, jnp.shape(q_pos)[0], jnp.shape(k_pos)[0]), bool)

  def block_summary(self, q_len, kv_len, block_q, block_k):
    return np.full((1, _num_blocks(q_len, block_q), _num_blocks(kv_len, block_k)), FULL,
                   np.int32)


# ----------------------------------------------------------------------------------------------
# Data-dependent masks: carry arrays (traced under jit).


def _as_batch_vector(x: Any, name: str) -> Array:
  if _is_concrete(x):
    x = np.asarray(x)
  if jnp.ndim(x) == 0:
    x = x.reshape(1) if hasattr(x, "reshape") else np.asarray([x])
  if jnp.ndim(x) != 1:
    raise ValueError(f"{name} must be a scalar or have shape [batch], got shape {jnp.shape(x)}")
  if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {jnp.asarray(x).dtype}")
  return x


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixLMMask(Mask):
  """Prefix-LM: keys in the prefix are visible to every query; after it, causal.

  ``prefix_len`` is an int or an int array ``[batch]``.
  """

  prefix_len: Any
  q_offset: int = 0

  def __post_init__(self):
    object.__setattr__(self, "prefix_len", _as_batch_vector(self.prefix_len, "prefix_len"))

  @property
  def batch_size(self):
    n = jnp.shape(self.prefix_len)[0]
    return None if n == 1 else n

  def __repr__(self):
    off = self.q_offset if _is_concrete(self.q_offset) else type(self.q_offset).__name__
    return f"PrefixLMMask(prefix_len shape {tuple(jnp.shape(self.prefix_len))}, q_offset={off})"

  def check_shape(self, batch, q_len, kv_len):
    if jnp.shape(self.prefix_len)[0] not in (1, batch):
      raise _shape_error(self, "prefix_len", f"[batch]=({batch},) or (1,)",
                         jnp.shape(self.prefix_len))

  def align_q_offset(self, q_offset):
    off = _resolve_q_offset(self, self.q_offset, q_offset)
    return self if off is self.q_offset else dataclasses.replace(self, q_offset=off)

  def allowed(self, q_pos, k_pos):
    qp = jnp.asarray(q_pos)[None, :, None] + self.q_offset
    kp = jnp.asarray(k_pos)[None, None, :]
    pre = jnp.asarray(self.prefix_len)[:, None, None]
    return (kp <= qp) | (kp < pre)

  def block_summary(self, q_len, kv_len, block_q, block_k):
    causal = CausalMask(self.q_offset).block_summary(q_len, kv_len, block_q, block_k)
    ks, ke = _block_bounds(kv_len, block_k)
    xp = np if _is_concrete(self.prefix_len) else jnp
    pre = xp.asarray(self.prefix_len)[:, None, None]
    in_prefix = xp.asarray(ke)[None, None, :] < pre  # whole k block inside the prefix
    touches_prefix = xp.asarray(ks)[None, None, :] < pre
    out = xp.where(in_prefix, FULL, xp.where(touches_prefix, xp.maximum(causal, PARTIAL), causal))
    return out.astype(xp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentMask(Mask):
  """Packed documents: query and key must carry the same segment id.

  ``q_segment_ids`` ``[batch, q_len]`` and ``kv_segment_ids`` ``[batch, kv_len]`` (int). Combine
  with ``CausalMask()`` for packed causal LM.
  """

  q_segment_ids: Any
  kv_segment_ids: Any = None

  def __post_init__(self):
    if self.kv_segment_ids is None:
      object.__setattr__(self, "kv_segment_ids", self.q_segment_ids)
    for name in ("q_segment_ids", "kv_segment_ids"):
      val = getattr(self, name)
      if jnp.ndim(val) != 2:
        raise ValueError(f"{name} must have shape [batch, length], got shape {jnp.shape(val)}")
    if jnp.shape(self.q_segment_ids)[0] != jnp.shape(self.kv_segment_ids)[0]:
      raise ValueError("q_segment_ids and kv_segment_ids must share the batch size, got "
                       f"{jnp.shape(self.q_segment_ids)} and {jnp.shape(self.kv_segment_ids)}")

  @property
  def batch_size(self):
    return jnp.shape(self.q_segment_ids)[0]

  def check_shape(self, batch, q_len, kv_len):
    qshape, kshape = jnp.shape(self.q_segment_ids), jnp.shape(self.kv_segment_ids)
    if self.kv_segment_ids is self.q_segment_ids and q_len != kv_len:
      raise ValueError(f"SegmentMask: one segment_ids array of shape {tuple(qshape)} serves "
                       f"queries and keys, but q_len={q_len} != kv_len={kv_len}; pass "
                       f"q_segment_ids [batch, {q_len}] and kv_segment_ids [batch, {kv_len}]")
    bs = _batch_spec(batch)
    if qshape[0] not in (1, batch) or qshape[1] != q_len:
      raise _shape_error(self, "q_segment_ids", f"[batch, q_len]=({bs}, {q_len})", qshape)
    if kshape[0] not in (1, batch) or kshape[1] != kv_len:
      raise _shape_error(self, "kv_segment_ids", f"[batch, kv_len]=({bs}, {kv_len})", kshape)

  def allowed(self, q_pos, k_pos):
    qs = jnp.take(jnp.asarray(self.q_segment_ids), jnp.asarray(q_pos), axis=1, mode="clip")
    ks = jnp.take(jnp.asarray(self.kv_segment_ids), jnp.asarray(k_pos), axis=1, mode="clip")
    return qs[:, :, None] == ks[:, None, :]

  @staticmethod
  def _block_min_max(ids, block):
    b, n = ids.shape
    nb = _num_blocks(n, block)
    pad = nb * block - n
    # Pad with an edge value so it does not widen the range of the last block.
    ids = jnp.pad(ids, ((0, 0), (0, pad)), mode="edge").reshape(b, nb, block)
    return ids.min(-1), ids.max(-1)

  def block_summary(self, q_len, kv_len, block_q, block_k):
    qmin, qmax = self._block_min_max(jnp.asarray(self.q_segment_ids), block_q)
    kmin, kmax = self._block_min_max(jnp.asarray(self.kv_segment_ids), block_k)
    qmin, qmax = qmin[:, :, None], qmax[:, :, None]
    kmin, kmax = kmin[:, None, :], kmax[:, None, :]
    empty = (qmax < kmin) | (kmax < qmin)
    full = (qmin == qmax) & (kmin == kmax) & (qmin == kmin)
    return jnp.where(empty, EMPTY, jnp.where(full, FULL, PARTIAL)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ValidLengthMask(Mask):
  """Padding: only the first ``kv_lengths[b]`` keys (and ``q_lengths[b]`` queries) are real.

  Either argument may be None. Rows of padded queries are fully masked; the attention functions
  return zeros for rows with no visible key.
  """

  kv_lengths: Any = None
  q_lengths: Any = None

  def __post_init__(self):
    if self.kv_lengths is None and self.q_lengths is None:
      raise ValueError("ValidLengthMask needs kv_lengths or q_lengths")
    for name in ("kv_lengths", "q_lengths"):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, _as_batch_vector(getattr(self, name), name))

  @property
  def batch_size(self):
    sizes = [jnp.shape(x)[0] for x in (self.kv_lengths, self.q_lengths) if x is not None]
    n = max(sizes)
    return None if n == 1 else n

  def check_shape(self, batch, q_len, kv_len):
    for name in ("kv_lengths", "q_lengths"):
      val = getattr(self, name)
      if val is not None and jnp.shape(val)[0] not in (1, batch):
        raise _shape_error(self, name, f"[batch]=({batch},) or (1,)", jnp.shape(val))

  def allowed(self, q_pos, k_pos):
    qp = jnp.asarray(q_pos)[None, :, None]
    kp = jnp.asarray(k_pos)[None, None, :]
    ok = jnp.ones((1, qp.shape[1], kp.shape[2]), bool)
    if self.kv_lengths is not None:
      ok = ok & (kp < jnp.asarray(self.kv_lengths)[:, None, None])
    if self.q_lengths is not None:
      ok = ok & (qp < jnp.asarray(self.q_lengths)[:, None, None])
    return ok

  def block_summary(self, q_len, kv_len, block_q, block_k):
    concrete = all(_is_concrete(x) for x in (self.kv_lengths, self.q_lengths) if x is not None)
    xp = np if concrete else jnp
    out = xp.full((1, _num_blocks(q_len, block_q), _num_blocks(kv_len, block_k)), FULL)
    for lengths, (starts, ends), axis in (
        (self.kv_lengths, _block_bounds(kv_len, block_k), 2),
        (self.q_lengths, _block_bounds(q_len, block_q), 1)):
      if lengths is None:
        continue
      n = xp.asarray(lengths)[:, None, None]
      shape = (1, 1, -1) if axis == 2 else (1, -1, 1)
      s, e = xp.asarray(starts).reshape(shape), xp.asarray(ends).reshape(shape)
      code = xp.where(s >= n, EMPTY, xp.where(e < n, FULL, PARTIAL))
      out = xp.minimum(out, code)
    return out.astype(xp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayMask(Mask):
  """A dense boolean array ``[B|1, q_len, kv_len]`` (or ``[q_len, kv_len]``) as a mask value.

  For masks that have no structured form. The block summary reduces the array per tile.
  A per-head array ``[B|1, H, q_len, kv_len]`` is accepted too (a head axis of size 1 is
  dropped): ``attnlab.attention`` applies it as an additive ``-inf`` bias, so it must be the
  whole ``mask=`` of the call, not part of an ``&`` / ``|`` combination.
  """

  array: Any

  def __post_init__(self):
    a = self.array
    if jnp.ndim(a) == 2:
      a = a[None]
    if jnp.ndim(a) == 4 and jnp.shape(a)[1] == 1:
      a = a[:, 0]
    if jnp.ndim(a) not in (3, 4):
      raise ValueError(f"array must have shape [batch, q_len, kv_len], [q_len, kv_len] or "
                       f"[batch, heads, q_len, kv_len], got {jnp.shape(self.array)}")
    if jnp.asarray(a).dtype != jnp.bool_:
      raise TypeError(f"array must be boolean, got dtype {jnp.asarray(a).dtype}")
    object.__setattr__(self, "array", a)

  @property
  def per_head(self) -> bool:
    """True for a ``[B|1, H, q_len, kv_len]`` array (applied by ``attention`` as a bias)."""
    return jnp.ndim(self.array) == 4

  def _refuse_per_head(self) -> None:
    if self.per_head:
      raise ValueError("a per-head ArrayMask [batch, heads, q_len, kv_len] must be the whole "
                       "mask= of attnlab.attention (it is applied as an additive -inf bias), "
                       "not combined with & or |; combine the arrays first")

  @property
  def batch_size(self):
    n = jnp.shape(self.array)[0]
    return None if n == 1 else n

  def check_shape(self, batch, q_len, kv_len):
    shape = jnp.shape(self.array)
    if shape[0] not in (1, batch) or tuple(shape[-2:]) != (q_len, kv_len):
      raise _shape_error(self, "array",
                         f"[batch, q_len, kv_len]=({_batch_spec(batch)}, {q_len}, {kv_len}) (or "
                         f"[q_len, kv_len]=({q_len}, {kv_len}))", shape)

  def allowed(self, q_pos, k_pos):
    self._refuse_per_head()
    a = jnp.take(jnp.asarray(self.array), jnp.asarray(q_pos), axis=1, mode="fill",
                 fill_value=False)
    return jnp.take(a, jnp.asarray(k_pos), axis=2, mode="fill", fill_value=False)

  def block_summary(self, q_len, kv_len, block_q, block_k):
    self._refuse_per_head()
    a = self.array
    b, tq, tk = jnp.shape(a)
    if (tq, tk) != (q_len, kv_len):
      raise ValueError(f"ArrayMask has shape {(tq, tk)} but attention is {(q_len, kv_len)}")
    nq, nk = _num_blocks(tq, block_q), _num_blocks(tk, block_k)
    xp = np if _is_concrete(a) else jnp
    a = xp.asarray(a)
    pad = ((0, 0), (0, nq * block_q - tq), (0, nk * block_k - tk))
    # Padding positions count as "allowed" for fullness and "blocked" for emptiness.
    any_ = xp.pad(a, pad, constant_values=False).reshape(b, nq, block_q, nk, block_k)
    all_ = xp.pad(a, pad, constant_values=True).reshape(b, nq, block_q, nk, block_k)
    any_ = any_.any(axis=(2, 4))
    all_ = all_.all(axis=(2, 4))
    return xp.where(all_, FULL, xp.where(any_, PARTIAL, EMPTY)).astype(xp.int32)


# ----------------------------------------------------------------------------------------------
# A mask given by a function (FlexAttention's ``mask_mod``).


class _NoHead:
  """The ``head`` argument of a ``FunctionMask``'s function: attnlab masks have no head axis,
  so any use of it raises a TypeError that says what to do instead."""

  def _fail(self, *args, **kwargs):
    raise TypeError("FunctionMask: masks are shared by all heads (attnlab masks have no head "
                    "axis), so mask_fn cannot use its head argument; for a per-head mask "
                    "return -inf from a score_mod instead")

  __index__ = __int__ = __float__ = __bool__ = __array__ = __jax_array__ = _fail
  __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _fail
  __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __getitem__ = _fail
  __hash__ = object.__hash__

  def __repr__(self):
    return "<FunctionMask head: unavailable>"


NO_HEAD = _NoHead()


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionMask(Mask):
  """A mask given by ``mask_fn(batch, head, q_idx, kv_idx) -> bool`` (FlexAttention's
  ``mask_mod``).

  ``mask_fn`` is elementwise ``jnp`` code: it is called with int32 arrays that broadcast
  against each other (``batch [B|1, 1, 1]``, ``q_idx [1, n, 1]``, ``kv_idx [1, 1, m]``) and
  returns a bool array broadcastable to ``[B|1, n, m]``. ``q_idx`` is the absolute query
  position ``q_offset + i`` (the call's ``q_offset`` when the mask is built with 0, as the
  other masks), ``kv_idx`` the key index. Masks have no head axis, so ``head`` is a
  placeholder that raises a TypeError if used (per-head masking: a ``score_mod`` returning
  ``-inf``). Positions past the sequence ends may be passed (padding); ``jnp`` indexing clamps
  them and the result there is ignored.

  ``mask_fn`` may close over arrays (segment ids, lengths). The block summary is computed by
  evaluating the function on the whole grid, one q block at a time (O(q_len * kv_len) work,
  O(block_q * kv_len) memory): statically (numpy) when nothing it reads is traced, traced
  otherwise. ``batch_size`` is set by ``attnlab.attention`` from the call (``bind_batch``).
  """

  mask_fn: Any
  q_offset: Any = 0
  batch_size_: int | None = None

  def __post_init__(self):
    if not callable(self.mask_fn):
      raise TypeError(f"mask_fn must be callable(batch, head, q_idx, kv_idx) -> bool, got "
                      f"{type(self.mask_fn).__name__}")
    if jnp.ndim(self.q_offset) != 0:
      raise ValueError(f"q_offset must be a scalar, got shape {jnp.shape(self.q_offset)}")

  def __repr__(self):
    name = getattr(self.mask_fn, "__name__", type(self.mask_fn).__name__)
    return f"FunctionMask({name}, batch_size={self.batch_size_})"

  @property
  def batch_size(self):
    return None if (self.batch_size_ or 1) == 1 else self.batch_size_

  def _replace(self, **changes) -> "FunctionMask":
    """``dataclasses.replace`` keeping the hoisted function and constants (an unflattened
    copy must not call ``mask_fn``, whose closure may hold another trace's tracers)."""
    out = dataclasses.replace(self, **changes)
    for f in ("_program", "_consts", "_static", "_unflattened"):
      if f in self.__dict__:
        object.__setattr__(out, f, self.__dict__[f])
    return out

  def align_q_offset(self, q_offset):
    off = _resolve_q_offset(self, self.q_offset, q_offset)
    return self if off is self.q_offset else self._replace(q_offset=off)

  def bind_batch(self, batch: int) -> "FunctionMask":
    """This mask evaluated over ``batch`` examples (batch indices ``0 .. batch - 1``)."""
    if self.batch_size_ == batch:
      return self
    return self._replace(batch_size_=batch)

  def hoisted(self) -> tuple[Any, tuple]:
    """``(program, consts)``: ``mask_fn`` traced once at scalar indices with every array it
    closes over (traced document ids included) hoisted into ``consts``, so that the mask's
    pytree leaves carry them and no tracer stays closed over inside a custom_vjp or kernel
    (``program`` is None when ``mask_fn`` cannot be traced at scalars; it is then called
    directly)."""
    if "_program" not in self.__dict__:
      zero = jnp.int32(0)
      try:
        closed = jax.make_jaxpr(lambda b, q, k: self.mask_fn(b, NO_HEAD, q, k))(zero, zero, zero)
        program, consts = _MaskProgram(closed.jaxpr), tuple(closed.consts)
      except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, TypeError) and "shared by all heads" in str(e):
          raise  # a misuse of the head argument: the user should see it
        program, consts = None, ()  # not traceable at scalars: called directly
      object.__setattr__(self, "_program", program)
      object.__setattr__(self, "_consts", consts)
    return self.__dict__["_program"], self.__dict__["_consts"]

  def evaluate_at(self, batch, q_idx, kv_idx):
    """``mask_fn`` at broadcasting int32 ``batch``, absolute ``q_idx`` and ``kv_idx`` (no
    offset added): a bool array (the kernels trace it at their tile shape)."""
    out = jnp.asarray(self._evaluate(batch, q_idx, kv_idx))
    if out.dtype != jnp.bool_:
      raise TypeError(f"FunctionMask: mask_fn must return booleans, got dtype {out.dtype}")
    return out

  def _evaluate(self, b, qa, ka):
    program, consts = self.hoisted() if self.__dict__.get("_unflattened") else (None, ())
    if program is None:
      return jnp.asarray(self.mask_fn(b, NO_HEAD, qa, ka))
    scalar_fn = lambda b_, q_, k_: jax.core.eval_jaxpr(program.jaxpr, list(consts), b_, q_,
                                                       k_)[0]
    return jnp.vectorize(scalar_fn)(b, qa, ka)

  def _call(self, q_idx, k_idx):
    nb = self.batch_size_ or 1
    b = jnp.arange(nb, dtype=jnp.int32)[:, None, None]
    qa = jnp.asarray(q_idx, jnp.int32)[None, :, None] + jnp.asarray(self.q_offset, jnp.int32)
    ka = jnp.asarray(k_idx, jnp.int32)[None, None, :]
    out = self._evaluate(b, qa, ka)
    if out.dtype != jnp.bool_:
      raise TypeError(f"FunctionMask: mask_fn must return booleans, got dtype {out.dtype}")
    out = out.reshape((1,) * (3 - out.ndim) + out.shape) if out.ndim < 3 else out
    if out.ndim != 3 or out.shape[0] not in (1, nb):
      raise ValueError(f"FunctionMask: mask_fn must return an array broadcastable to "
                       f"[batch, q, kv]=({nb}, {qa.shape[1]}, {ka.shape[2]}), got shape "
                       f"{out.shape}")
    return jnp.broadcast_to(out, (out.shape[0], qa.shape[1], ka.shape[2]))

  def allowed(self, q_pos, k_pos):
    return self._call(q_pos, k_pos)

  def is_traced(self) -> bool:
    """Whether the mask depends on traced data (then its block summary is traced)."""
    with jax.ensure_compile_time_eval():
      return _is_traced(self._call(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32)))

  def block_summary(self, q_len, kv_len, block_q, block_k):
    nq, nk = _num_blocks(q_len, block_q), _num_blocks(kv_len, block_k)
    k_all = np.arange(nk * block_k)
    k_ok = k_all < kv_len
    k_eval = np.minimum(k_all, kv_len - 1)

    def row(i, xp):
      q_all = i * block_q + xp.arange(block_q)
      q_ok = q_all < q_len
      a = self._call(xp.minimum(q_all, q_len - 1), k_eval)  # [B|1, bq, nk * bk]
      valid = q_ok[None, :, None] & k_ok[None, None, :]
      a = xp.asarray(a)
      any_ = (a & valid).reshape(a.shape[0], block_q, nk, block_k).any(axis=(1, 3))
      all_ = (a | ~valid).reshape(a.shape[0], block_q, nk, block_k).all(axis=(1, 3))
      return xp.where(all_, FULL, xp.where(any_, PARTIAL, EMPTY)).astype(xp.int32)

    if not self.is_traced():
      with jax.ensure_compile_time_eval():
        rows = [np.asarray(row(i, jnp)) for i in range(nq)]
      return np.stack(rows, axis=1)  # [B|1, nq, nk]
    out = jax.lax.map(lambda i: row(i, jnp), jnp.arange(nq, dtype=jnp.int32))
    return jnp.swapaxes(out, 0, 1)


class _MaskProgram:
  """A ``FunctionMask``'s traced function (pytree metadata). Compared by its printed jaxpr
  (constant types included), so masks built afresh from the same code share a jit cache
  entry."""

  def __init__(self, jaxpr):
    self.jaxpr = jaxpr
    self._key = str(jaxpr)

  def __eq__(self, other):
    return isinstance(other, _MaskProgram) and self._key == other._key

  def __hash__(self):
    return hash(self._key)


class _StaticConsts:
  """The concrete (non-traced) arrays a ``FunctionMask`` closes over, kept as pytree metadata
  so that they stay concrete inside jit (a static block summary); compared by value."""

  def __init__(self, values: tuple):
    self.values = tuple(None if v is None else np.asarray(v) for v in values)
    self._key = tuple(None if v is None else (v.shape, str(v.dtype), hashlib.sha1(
        np.ascontiguousarray(v).tobytes()).hexdigest()) for v in self.values)

  def __eq__(self, other):
    return isinstance(other, _StaticConsts) and self._key == other._key

  def __hash__(self):
    return hash(self._key)


def _traced_mask_fn(*args):
  raise TypeError("this FunctionMask was rebuilt from its pytree; it evaluates its traced "
                  "program (FunctionMask.hoisted), not a Python function")


def bind_batch(mask: Mask | None, batch: int) -> Mask | None:
  """``mask`` with every ``FunctionMask`` in it evaluated over ``batch`` examples."""
  if isinstance(mask, FunctionMask):
    return mask.bind_batch(batch)
  if isinstance(mask, (And, Or)):
    a, b = bind_batch(mask.a, batch), bind_batch(mask.b, batch)
    return mask if (a is mask.a and b is mask.b) else type(mask)(a, b)
  return mask


# ----------------------------------------------------------------------------------------------
# Composition.


def _combine(a, b, fn_np, fn_jnp):
  if _is_concrete(a) and _is_concrete(b):
    return fn_np(a, b).astype(np.int32)
  return fn_jnp(jnp.asarray(a), jnp.asarray(b)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class And(Mask):
  a: Mask
  b: Mask

  @property
  def batch_size(self):
    return self.a.batch_size or self.b.batch_size

  def check_shape(self, batch, q_len, kv_len):
    self.a.check_shape(batch, q_len, kv_len)
    self.b.check_shape(batch, q_len, kv_len)

  def align_q_offset(self, q_offset):
    a, b = self.a.align_q_offset(q_offset), self.b.align_q_offset(q_offset)
    return self if (a is self.a and b is self.b) else And(a, b)

  def allowed(self, q_pos, k_pos):
    return self.a.allowed(q_pos, k_pos) & self.b.allowed(q_pos, k_pos)

  def block_summary(self, *args):
    return _combine(self.a.block_summary(*args), self.b.block_summary(*args), np.minimum,
                    jnp.minimum)


@dataclasses.dataclass(frozen=True, eq=False)
class Or(Mask):
  a: Mask
  b: Mask

  @property
  def batch_size(self):
    return self.a.batch_size or self.b.batch_size

  def check_shape(self, batch, q_len, kv_len):
    self.a.check_shape(batch, q_len, kv_len)
    self.b.check_shape(batch, q_len, kv_len)

  def align_q_offset(self, q_offset):
    a, b = self.a.align_q_offset(q_offset), self.b.align_q_offset(q_offset)
    return self if (a is self.a and b is self.b) else Or(a, b)

  def allowed(self, q_pos, k_pos):
    return self.a.allowed(q_pos, k_pos) | self.b.allowed(q_pos, k_pos)

  def block_summary(self, *args):
    return _combine(self.a.block_summary(*args), self.b.block_summary(*args), np.maximum,
                    jnp.maximum)


def combine(*masks: Mask | None) -> Mask | None:
  """AND together the non-None masks; None if there are none."""
  out = None
  for m in masks:
    if m is None:
      continue
    _check_mask(m, "mask")
    out = m if out is None else out & m
  return out


def is_static(summary: Array) -> bool:
  """True when a block summary is concrete (known at trace time)."""
  return isinstance(summary, np.ndarray)


__all__ = [
    "EMPTY", "PARTIAL", "FULL", "Mask", "LocalMask", "CausalMask", "SlidingWindowMask",
    "FullMask", "ArrayMask", "PrefixLMMask", "SegmentMask", "ValidLengthMask", "FunctionMask",
    "And", "Or", "combine", "is_static", "bind_batch",
]


# ----------------------------------------------------------------------------------------------
# Masks are pytrees: their arrays (segment ids, lengths, offsets) are leaves, so a mask can be
# passed through jax.jit / custom_vjp / shard_map as an ordinary argument. Unflattening bypasses
# __post_init__ so JAX's placeholder leaves are never validated.


def _register(cls, data_fields: tuple[str, ...], meta_fields: tuple[str, ...] = ()):
  def flatten(m):
    return [getattr(m, f) for f in data_fields], tuple(getattr(m, f) for f in meta_fields)

  def unflatten(meta, children):
    obj = object.__new__(cls)
    for f, val in zip(data_fields, children):
      object.__setattr__(obj, f, val)
    for f, val in zip(meta_fields, meta):
      object.__setattr__(obj, f, val)
    return obj

  jax.tree_util.register_pytree_node(cls, flatten, unflatten)


_register(LocalMask, ("q_offset",), ("left", "right"))
_register(FullMask, ())
_register(PrefixLMMask, ("prefix_len", "q_offset"))
_register(SegmentMask, ("q_segment_ids", "kv_segment_ids"))
_register(ValidLengthMask, ("kv_lengths", "q_lengths"))
_register(ArrayMask, ("array",))


def _flatten_function_mask(m: FunctionMask):
  program, consts = m.hoisted()
  if program is None:  # called directly: the function itself is the metadata
    return (m.q_offset, ()), (m.mask_fn, m.batch_size_, None, None, ())
  if "_static" not in m.__dict__:
    traced = tuple(i for i, c in enumerate(consts) if isinstance(c, jax.core.Tracer))
    static = _StaticConsts(tuple(None if i in traced else c for i, c in enumerate(consts)))
    object.__setattr__(m, "_static", (static, traced))
  static, traced = m.__dict__["_static"]
  return (m.q_offset, tuple(consts[i] for i in traced)), (None, m.batch_size_, program, static,
                                                          traced)


def _unflatten_function_mask(meta, children):
  fn, batch_size, program, static, traced = meta
  obj = object.__new__(FunctionMask)
  object.__setattr__(obj, "mask_fn", fn if fn is not None else _traced_mask_fn)
  object.__setattr__(obj, "batch_size_", batch_size)
  object.__setattr__(obj, "q_offset", children[0])
  if program is not None:
    consts = list(static.values)
    for i, c in zip(traced, children[1]):
      consts[i] = c
    object.__setattr__(obj, "_program", program)
    object.__setattr__(obj, "_consts", tuple(consts))
    object.__setattr__(obj, "_static", (static, traced))
    object.__setattr__(obj, "_unflattened", True)
  return obj


# A FunctionMask's leaves are its q_offset and the traced arrays its function closes over;
# its traced program and concrete arrays are metadata (see _MaskProgram, _StaticConsts).
jax.tree_util.register_pytree_node(FunctionMask, _flatten_function_mask,
                                   _unflatten_function_mask)
_register(And, ("a", "b"))
_register(Or, ("a", "b"))
