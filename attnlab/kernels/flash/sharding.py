"""Run the flash kernels on inputs sharded over an explicit-axis mesh.

A ``pallas_call`` cannot index refs whose type carries an explicit sharding
(``jax.sharding.AxisType.Explicit``, ``jax.make_mesh``'s default). Attention is independent per
batch element and per head, so the kernel runs unchanged on each device's block inside
``jax.shard_map`` over the mesh axes that shard q's batch and head dims:

* q, k, v: ``P(batch_axes, None, head_axes, None)``. k and v are resharded to q's batch and
  head axes; the sequence and feature dims are gathered (resharded to unsharded) first.
  Head sharding is kept only when the kv heads split evenly over the head axes, which keeps
  GQA's grouping local (global head ``h`` reads kv head ``h // (H // K)``); otherwise the heads
  are gathered and only the batch stays sharded.
* bias ``[B|1, H|1, Tq|1, Tk|1]``, ALiBi slopes ``[B|1, H]`` and a per-batch ``q_offset``
  ``[B]`` follow q's batch / head axes on their broadcast (size > 1) dims.
* Masks holding arrays (segment ids, lengths, boolean arrays) are not mapped: such a call is
  refused (``unsupported_reason``) and ``implementation="auto"`` falls back to "chunked".

The output keeps q's batch / head sharding.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from attnlab.core import common

Array = jax.Array


def _spec(x) -> tuple | None:
  """``x``'s explicit sharding spec padded to its rank, or None when nothing shards it."""
  try:
    sharding = getattr(jax.typeof(x), "sharding", None)
  except TypeError:  # not an array-like leaf
    return None
  spec = getattr(sharding, "spec", None)
  if spec is None or all(p is None for p in spec):
    return None
  return tuple(spec) + (None,) * (x.ndim - len(spec))


def _mesh(*xs):
  for x in xs:
    if _spec(x) is not None:
      return jax.typeof(x).sharding.mesh
  return None


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _size(mesh, entry) -> int:
  n = 1
  for a in _axes(entry):
    n *= mesh.shape[a]
  return n


def is_explicitly_sharded(*trees) -> bool:
  """Whether any array leaf of ``trees`` is sharded over an explicit mesh axis."""
  return any(_spec(leaf) is not None for leaf in jax.tree.leaves(trees))


def unsupported_reason(mask) -> str | None:
  """Why an explicitly sharded call cannot run the kernel under ``shard_map``, or None."""
  if mask is not None and any(isinstance(leaf, jax.Array) or hasattr(leaf, "shape")
                              for leaf in jax.tree.leaves(mask)):
    return (f"the mask ({type(mask).__name__}) holds arrays (segment ids, lengths or a "
            "boolean array), which the Pallas kernel does not map over an explicit-axis mesh "
            "(jax.sharding.AxisType.Explicit); use "
            "implementation='chunked' or 'xla', or wrap the call in "
            "jax.shard_map(..., check_vma=False)")
  return None


def _plan(mesh, q: Array, k: Array) -> tuple[Any, Any]:
  """(batch entry, head entry) of the partition spec the kernel is mapped over."""
  spec = _spec(q) or (None,) * 4
  batch, heads = spec[0], spec[2]
  if heads is not None and k.shape[2] % _size(mesh, heads):
    heads = None
  if batch is not None and set(_axes(batch)) & set(_axes(heads)):
    heads = None
  return batch, heads


def run(kernel: Callable[..., Array], q: Array, k: Array, v: Array, *, bias: Array | None,
        alibi_slopes: Array | None, q_offset: Any, **static: Any) -> Array:
  """``kernel(q, k, v, bias=, alibi_slopes=, q_offset=, **static)`` on each device's block of
  q / k / v ``[B, T, H, D]`` sharded over an explicit mesh; returns ``[B, Tq, H, Dv]`` with q's
  batch / head sharding."""
  mesh = _mesh(q, k, v, bias, alibi_slopes, q_offset)
  b, tq, h, _ = q.shape
  tk = k.shape[1]
  batch, heads = _plan(mesh, q, k)
  qkv_spec = P(batch, None, heads, None)
  q, k, v = (jax.sharding.reshard(x, qkv_spec) for x in (q, k, v))

  operands, specs = [q, k, v], [qkv_spec] * 3
  if bias is not None:
    bias = common.check_bias(bias, b, h, tq, tk)
    bias_spec = P(batch if bias.shape[0] > 1 else None, heads if bias.shape[1] > 1 else None,
                  None, None)
    operands.append(jax.sharding.reshard(bias, bias_spec))
    specs.append(bias_spec)
  if alibi_slopes is not None:
    alibi_slopes = common.check_head_vector(alibi_slopes, "alibi_slopes", b, h)
    if alibi_slopes.ndim == 1:
      alibi_slopes = alibi_slopes[None]
    slopes_spec = P(batch if alibi_slopes.shape[0] > 1 else None, heads)
    operands.append(jax.sharding.reshard(alibi_slopes.astype(jnp.float32), slopes_spec))
    specs.append(slopes_spec)
  offset = jnp.asarray(q_offset, jnp.int32)
  offset_spec = P(batch if offset.ndim and offset.size > 1 else None) if offset.ndim else P()
  operands.append(jax.sharding.reshard(offset, offset_spec))
  specs.append(offset_spec)
  has_bias, has_slopes = bias is not None, alibi_slopes is not None

  def body(q, k, v, *rest):
    rest = list(rest)
    local_bias = rest.pop(0) if has_bias else None
    local_slopes = rest.pop(0) if has_slopes else None
    return kernel(q, k, v, bias=local_bias, alibi_slopes=local_slopes, q_offset=rest.pop(0),
                  **static)

  # Every mesh axis is made manual (the Pallas interpreter cannot run under a partly explicit
  # mesh); axes that shard neither batch nor heads see replicated blocks.
  mapped = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                         check_vma=False)
  return mapped(*operands)
