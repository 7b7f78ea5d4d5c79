"""Masks compiled for use inside a Pallas kernel.

``attnlab.masks`` values answer ``allowed(q_pos, k_pos)`` with ordinary ``jnp`` code, which for
data-dependent masks gathers per position (``jnp.take``): that does not lower inside a kernel.
``compile_mask`` turns a mask pytree into

* a static *program* (a hashable nested tuple) that the kernel evaluates on one tile from
  iotas and a few loaded values, and
* the arrays the program reads: per-batch int32 *scalars* (``q_offset``, prefix lengths, valid
  lengths), per-query *q vectors* and per-key *k vectors* (segment ids), which the kernel
  receives as small extra inputs (scalars as a ``[B, S]`` table, vectors blocked like q / k).

Supported: ``LocalMask`` (causal, sliding window), ``FullMask``, ``PrefixLMMask``,
``SegmentMask``, ``ValidLengthMask``, ``FunctionMask`` (its function traced at the tile shape
by the wrapper, its captured arrays read by index from their refs, ``ref_reads``) and any
``And`` / ``Or`` of them. A user ``Mask`` subclass
without array leaves is evaluated by calling its own ``allowed`` on the tile's positions (so it
must be elementwise ``jnp`` code). ``ArrayMask`` and unknown masks with array leaves are refused
(``UnsupportedMask``); ``implementation="auto"`` then falls back to the chunked path.

Also here: ``check_supported`` (the support check, no arrays built), ``mask_kind`` (autotuner
keys) and ``tile_states`` (block summary -> tile states). Public as ``attnlab.kernels.kmask``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core import masks as masks_lib


class UnsupportedMask(ValueError):
  """The mask cannot be evaluated inside the kernel."""


@dataclasses.dataclass
class CompiledMask:
  program: tuple  # static, hashable
  scalars: list   # int32 arrays, each [B|1]
  q_vecs: list    # int32 arrays [B, Tq]
  k_vecs: list    # int32 arrays [B, Tk]
  functions: list = dataclasses.field(default_factory=list)  # FunctionMasks ("function" ops)


class _Builder:

  def __init__(self):
    self.scalars, self.q_vecs, self.k_vecs, self.functions = [], [], [], []

  def scalar(self, x) -> int:
    x = jnp.asarray(x, jnp.int32)
    if x.ndim == 0:
      x = x.reshape(1)
    self.scalars.append(x)
    return len(self.scalars) - 1

  def q_vec(self, x) -> int:
    self.q_vecs.append(jnp.asarray(x, jnp.int32))
    return len(self.q_vecs) - 1

  def k_vec(self, x) -> int:
    self.k_vecs.append(jnp.asarray(x, jnp.int32))
    return len(self.k_vecs) - 1

  def build(self, m) -> tuple:
    if isinstance(m, masks_lib.FullMask):
      return ("true",)
    if isinstance(m, masks_lib.LocalMask):
      return ("local", m.left, m.right, self.scalar(m.q_offset))
    if isinstance(m, masks_lib.PrefixLMMask):
      return ("prefix", self.scalar(m.prefix_len), self.scalar(m.q_offset))
    if isinstance(m, masks_lib.ValidLengthMask):
      kv = None if m.kv_lengths is None else self.scalar(m.kv_lengths)
      ql = None if m.q_lengths is None else self.scalar(m.q_lengths)
      return ("lengths", kv, ql)
    if isinstance(m, masks_lib.SegmentMask):
      return ("segment", self.q_vec(m.q_segment_ids), self.k_vec(m.kv_segment_ids))
    if isinstance(m, masks_lib.FunctionMask):
      self.functions.append(m)
      return ("function", len(self.functions) - 1, self.scalar(m.q_offset))
    if isinstance(m, masks_lib.And):
      return ("and", self.build(m.a), self.build(m.b))
    if isinstance(m, masks_lib.Or):
      return ("or", self.build(m.a), self.build(m.b))
    if isinstance(m, masks_lib.ArrayMask):
      raise UnsupportedMask("dense ArrayMask is not supported in the Pallas kernel (use a "
                            "structured mask, or implementation='chunked')")
    if isinstance(m, masks_lib.Mask) and not jax.tree.leaves(m):
      return ("generic", m)  # masks are hashable by identity (eq=False)
    raise UnsupportedMask(f"mask type {type(m).__name__} with array leaves is not supported "
                          "in the Pallas kernel")


def compile_mask(mask: masks_lib.Mask | None) -> CompiledMask | None:
  """Compile ``mask`` (None: no mask) or raise ``UnsupportedMask``."""
  if mask is None:
    return None
  b = _Builder()
  program = b.build(mask)
  return CompiledMask(program, b.scalars, b.q_vecs, b.k_vecs, b.functions)


def check_supported(mask: masks_lib.Mask | None) -> str | None:
  """Reason string when ``mask`` cannot run in the kernel, else None (no arrays are built)."""
  if mask is None:
    return None

  def walk(m):
    if isinstance(m, (masks_lib.And, masks_lib.Or)):
      return walk(m.a) or walk(m.b)
    if isinstance(m, (masks_lib.FullMask, masks_lib.LocalMask, masks_lib.PrefixLMMask,
                      masks_lib.ValidLengthMask, masks_lib.SegmentMask,
                      masks_lib.FunctionMask)):
      return None
    if isinstance(m, masks_lib.ArrayMask):
      return "dense ArrayMask is not supported by the Pallas kernel"
    if isinstance(m, masks_lib.Mask) and not jax.tree.leaves(m):
      return None
    return f"mask type {type(m).__name__} is not supported by the Pallas kernel"

  return walk(mask)


def mask_kind(mask: masks_lib.Mask | None) -> str:
  """A short, stable name of the mask structure (autotuner / benchmark keys)."""
  if mask is None:
    return "none"
  if isinstance(mask, masks_lib.LocalMask):
    if mask.left is None and mask.right == 0:
      return "causal"
    return "local"
  if isinstance(mask, (masks_lib.And, masks_lib.Or)):
    op = "&" if isinstance(mask, masks_lib.And) else "|"
    return f"{mask_kind(mask.a)}{op}{mask_kind(mask.b)}"
  return type(mask).__name__.replace("Mask", "").lower() or "mask"


@dataclasses.dataclass
class TileContext:
  """What a compiled mask needs to evaluate one tile inside a kernel.

  ``q_pos`` is ``[bq, 1]`` and ``k_pos`` ``[1, bk]`` int32 (absolute positions before
  ``q_offset``); ``scalar(i)`` returns an int32 scalar, ``q_vec(i)`` a ``[bq, 1]`` and
  ``k_vec(i)`` a ``[1, bk]`` int32 tile; ``function(n, q_pos, k_pos, q_offset)`` the boolean
  tile of the n-th ``FunctionMask``.
  """

  q_pos: Any
  k_pos: Any
  scalar: Callable[[int], Any]
  q_vec: Callable[[int], Any]
  k_vec: Callable[[int], Any]
  function: Callable[[int, Any, Any], Any] | None = None


def evaluate(program: tuple, ctx: TileContext):
  """Boolean ``[bq, bk]`` (or broadcastable to it) for one tile."""
  op = program[0]
  qp, kp = ctx.q_pos, ctx.k_pos
  if op == "true":
    return jnp.ones((qp.shape[0], kp.shape[1]), jnp.bool_)
  if op == "local":
    _, left, right, off = program
    qa = qp + ctx.scalar(off)
    ok = None
    if left is not None:
      ok = kp >= qa - left
    if right is not None:
      c = kp <= qa + right
      ok = c if ok is None else ok & c
    return jnp.ones((qp.shape[0], kp.shape[1]), jnp.bool_) if ok is None else ok
  if op == "prefix":
    _, pre, off = program
    return (kp <= qp + ctx.scalar(off)) | (kp < ctx.scalar(pre))
  if op == "lengths":
    _, kv, ql = program
    ok = jnp.ones((qp.shape[0], kp.shape[1]), jnp.bool_)
    if kv is not None:
      ok = ok & (kp < ctx.scalar(kv))
    if ql is not None:
      ok = ok & (qp < ctx.scalar(ql))
    return ok
  if op == "segment":
    _, qi, ki = program
    return ctx.q_vec(qi) == ctx.k_vec(ki)
  if op == "function":
    _, n, off = program
    return ctx.function(n, qp, kp, ctx.scalar(off))
  if op == "and":
    return evaluate(program[1], ctx) & evaluate(program[2], ctx)
  if op == "or":
    return evaluate(program[1], ctx) | evaluate(program[2], ctx)
  if op == "generic":
    return program[1].allowed(qp[:, 0], kp[0, :])[0]
  raise ValueError(f"unknown mask program {op!r}")


def tile_states(summary: Any, kv_len: int, block_k: int, nq: int, nk: int):
  """The block summary with the ragged last k block demoted from FULL to PARTIAL.

  Returns int32 ``[B|1, nq, nk]`` (numpy when static, else jax). ``summary=None`` means all
  tiles FULL.
  """
  if summary is None:
    summary = np.full((1, nq, nk), masks_lib.FULL, np.int32)
  xp = np if masks_lib.is_static(summary) else jnp
  summary = xp.asarray(summary).astype(xp.int32)
  if kv_len % block_k:
    last = xp.minimum(summary[..., -1:], masks_lib.PARTIAL)
    summary = xp.concatenate([summary[..., :-1], last], axis=-1)
  return summary
