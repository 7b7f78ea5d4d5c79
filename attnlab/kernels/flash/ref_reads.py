"""A score_mod's captured arrays read by index inside the kernels, never whole.

FlexAttention's kernels read a ``score_mod``'s captured tensors from global memory at the
indices the tile needs. This module does the same for the Pallas kernels: the score_mod's
jaxpr (its captured arrays hoisted into inputs, ``core.common.hoist_constants``) is split by
data dependence on the score into

* a *known* part that depends only on ``(batch, head, q_idx, kv_idx)`` and the captured
  arrays -- table lookups, relative-position buckets -- evaluated with every ``gather`` or
  ``dynamic_slice`` on a captured array turned into an indexed read of its kernel ref
  (``ref[i0, i1, ...]`` with tile-shaped integer index arrays: the elements the tile needs,
  e.g. ``[bq, bk]`` of a captured ``[T, S]`` bias, never the whole array);
* an *unknown* part that combines the score with those values (and is differentiated with
  respect to the score in the backward kernels).

A captured array used by any other operation (a per-head vector multiplied whole, say) is
read whole; that is only sensible for small arrays, and is what a score_mod written with
elementwise broadcasting asks for. Gathers follow ``lax.gather``'s modes: clip, fill (the
fill value where out of bounds) and promise-in-bounds (clamped here).

Departure: Mosaic TPU refs take no vector indexers, so the Mosaic driver loads captured
arrays whole (``Tile.mod_ref``; a scalar-prefetch path is not written). The Triton driver's
indexed reads are tested in interpret mode; their native lowering is untested (no GPU lent).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax import lax
from jax._src.interpreters import partial_eval as pe


@dataclasses.dataclass(frozen=True, eq=False)
class SplitMod:
  """A score_mod split for the kernels (built once per call, outside the kernel).

  ``known``: ``(*consts, b, h, q_idx, kv_idx) -> (*known outputs, *residuals)``;
  ``unknown``: ``(*residuals, s) -> unknown outputs``; ``out_known``: whether the score_mod's
  single output does not depend on the score at all (then it is the first known output).
  """

  known: Any
  unknown: Any
  out_known: bool
  n_consts: int


def split(jaxpr: Any, n_consts: int) -> SplitMod:
  """Split ``jaxpr`` (constvars = the ``n_consts`` captured arrays; invars
  ``s, b, h, q_idx, kv_idx``) by data dependence on ``s``."""
  unknowns = [False] * n_consts + [True, False, False, False, False]
  known, unknown, out_unknowns, _ = pe.partial_eval_jaxpr_nounits(closed(jaxpr), unknowns,
                                                                   False)
  return SplitMod(known, unknown, not out_unknowns[0], n_consts)


def closed(jaxpr: Any) -> Any:
  """``jaxpr`` with its constvars moved to the front of its inputs, as a closed jaxpr."""
  return pe.close_jaxpr(pe.convert_constvars_jaxpr(jaxpr))


class RefArray:
  """A captured array left in its kernel ref: only indexed reads load from it."""

  def __init__(self, ref, shape: tuple[int, ...], dtype):
    self.ref, self.shape, self.dtype = ref, tuple(shape), dtype

  def whole(self):
    return self.ref[...].reshape(self.shape)


def _read(ref: RefArray, index_arrays: Sequence[Any]):
  """``ref[i0, i1, ...]`` for broadcast-compatible int index arrays (clamped in bounds)."""
  shape = jnp.broadcast_shapes(*(jnp.shape(i) for i in index_arrays))
  idx = tuple(jnp.broadcast_to(jnp.clip(i, 0, n - 1).astype(jnp.int32), shape)
              for i, n in zip(index_arrays, ref.shape))
  if len(ref.shape) != len(ref.ref.shape):  # a scalar stored as [1]
    return ref.whole()[idx]
  return ref.ref[idx]


def _gather(ref: RefArray, indices, *, dimension_numbers, slice_sizes, mode, fill_value,
            **_):
  dn = dimension_numbers
  if dn.operand_batching_dims:
    return None
  collapsed = set(dn.collapsed_slice_dims)
  if any(slice_sizes[d] != 1 for d in dn.start_index_map):
    return None  # windows wider than one element along an indexed dim: read whole
  batch_shape = indices.shape[:-1]
  out_rank = len(batch_shape) + len(dn.offset_dims)
  batch_pos = [p for p in range(out_rank) if p not in dn.offset_dims]
  offset_operand_dims = [d for d in range(len(ref.shape)) if d not in collapsed]

  def expand(x, positions):  # place x's axes at ``positions`` of the output rank
    shape = [1] * out_rank
    for ax, p in enumerate(positions):
      shape[p] = x.shape[ax]
    return x.reshape(shape)

  arrays, in_bounds = [], None
  for d in range(len(ref.shape)):
    if d in dn.start_index_map:
      # (an indexed dim not collapsed is a size-1 offset dim: expand leaves a 1 there)
      i = expand(indices[..., dn.start_index_map.index(d)], batch_pos)
      if mode == lax.GatherScatterMode.FILL_OR_DROP:
        ok = (i >= 0) & (i < ref.shape[d])
        in_bounds = ok if in_bounds is None else in_bounds & ok
      arrays.append(i)
    else:
      k = offset_operand_dims.index(d)
      size = slice_sizes[d]
      arrays.append(expand(jnp.arange(size, dtype=jnp.int32), [dn.offset_dims[k]]))
      if size != ref.shape[d]:
        return None  # a partial window along an unindexed dim: read whole
  out = _read(ref, arrays)
  if in_bounds is not None:
    fill = jnp.nan if fill_value is None and jnp.issubdtype(ref.dtype, jnp.inexact) else (
        fill_value if fill_value is not None else 0)
    out = jnp.where(in_bounds, out, jnp.asarray(fill, out.dtype))
  return out.reshape(tuple(batch_shape[batch_pos.index(p)] if p in batch_pos else
                           slice_sizes[offset_operand_dims[dn.offset_dims.index(p)]]
                           for p in range(out_rank)))


def _dynamic_slice(ref: RefArray, *starts, slice_sizes, **_):
  arrays = []
  for d, (start, size) in enumerate(zip(starts, slice_sizes)):
    start = jnp.clip(start, 0, ref.shape[d] - size)  # XLA clamps the window in bounds
    shape = [1] * len(ref.shape)
    shape[d] = size
    arrays.append((start + jnp.arange(size, dtype=jnp.int32)).reshape(shape))
  return _read(ref, arrays)


_INDEXED = {"gather": _gather, "dynamic_slice": _dynamic_slice}


def evaluate(jaxpr: Any, args: Sequence[Any], materialize: bool = True) -> list[Any]:
  """Evaluate a closed jaxpr where some inputs are ``RefArray``s: indexed reads of them load
  only the elements indexed, any other use loads them whole. A ``RefArray`` passed straight
  through to an output (a captured scalar the score is multiplied by, say) is loaded whole
  there unless ``materialize`` is False (a nested jaxpr, whose consumer decides)."""
  env: dict = {}

  def read(v):
    if isinstance(v, jex_core.Literal):
      return v.val
    return env[v]

  for v, a in zip(jaxpr.jaxpr.constvars, jaxpr.consts):
    env[v] = a
  for v, a in zip(jaxpr.jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    outs = None
    if any(isinstance(x, RefArray) for x in ins):
      name = eqn.primitive.name
      inner = eqn.params.get("jaxpr")
      if name in _INDEXED and isinstance(ins[0], RefArray) and not any(
          isinstance(x, RefArray) for x in ins[1:]):
        out = _INDEXED[name](ins[0], *ins[1:], **eqn.params)
        outs = None if out is None else [out]
      elif isinstance(inner, jex_core.ClosedJaxpr) and name in ("pjit", "jit", "closed_call"):
        outs = evaluate(inner, ins, materialize=False)
      if outs is None:
        ins = [x.whole() if isinstance(x, RefArray) else x for x in ins]
    if outs is None:
      outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  outs = [read(v) for v in jaxpr.jaxpr.outvars]
  return [x.whole() if materialize and isinstance(x, RefArray) else x for x in outs]


def apply(mod: SplitMod, refs: Sequence[RefArray], s, b, h, q_idx, kv_idx, with_vjp: bool):
  """The score_mod on the tile ``s``: (modified scores, vjp w.r.t. ``s`` or None)."""
  known = evaluate(mod.known, [*refs, b, h, q_idx, kv_idx])
  if mod.out_known:  # the score_mod ignores the score: its derivative is zero
    out = jnp.broadcast_to(known[0], s.shape).astype(s.dtype)
    return out, ((lambda ds: jnp.zeros_like(ds)) if with_vjp else None)
  residuals = known[len(known) - len(mod.unknown.jaxpr.invars) + 1:]
  f = lambda x: jax.core.eval_jaxpr(mod.unknown.jaxpr, mod.unknown.consts, *residuals, x)[0]
  if not with_vjp:
    return f(s), None
  out, vjp = jax.vjp(f, s)
  return out, lambda ds: vjp(ds)[0]
