"""Device mesh, parameter / optimizer-state shardings and global batches.

* ``make_mesh(config)``: ``config.mesh.shape`` over ``config.mesh.axes`` (one -1 fills the
  remaining devices), ``AxisType.Auto`` axes (shardings propagate through jit).
* Parameters carry logical axis names (``attnlab.nn.partitioning``); ``config.logical_axis_rules``
  map them to mesh axes. A dimension the mesh axes do not divide is replicated.
* Optimizer-state leaves that mirror a parameter (same path suffix and shape, e.g. Adam's
  ``mu``/``nu``) get that parameter's sharding; the rest (counts) are replicated.
* The batch is split over the mesh axes of the ``"batch"`` rule (default ``("data",
  "fsdp")``). Each process loads its own rows and ``global_batch`` assembles the global
  ``jax.Array`` with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attnlab.train import config_lib


def make_mesh(config: config_lib.ConfigDict, devices: list[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = config_lib.resolve_mesh_shape(config.mesh.shape, len(devices))
  axes = tuple(config.mesh.axes)
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  try:
    return jax.make_mesh(shape, axes, axis_types=auto, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    # Topology-aware placement failed (unusual device sets): plain row-major order.
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), axes, axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_spec(config: config_lib.ConfigDict, ndim: int) -> PartitionSpec:
  axes = config_lib.batch_mesh_axes(config)
  first = None if not axes else (axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(first, *([None] * (ndim - 1)))


def batch_sharding(config: config_lib.ConfigDict, mesh: Mesh, batch: dict[str, Any]
                   ) -> dict[str, NamedSharding]:
  return {k: NamedSharding(mesh, batch_spec(config, np.ndim(v))) for k, v in batch.items()}


def global_batch(config: config_lib.ConfigDict, mesh: Mesh, local: dict[str, np.ndarray]
                 ) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over the batch mesh axes."""
  shardings = batch_sharding(config, mesh, local)
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in local.items()}


def _path_names(path) -> tuple[str, ...]:
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      out.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(str(k.idx))
    else:
      out.append(str(k))
  return tuple(out)


def mirror_param_shardings(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for `tree` (e.g. an optimizer state): param-shaped leaves whose path ends with
  a parameter's path take its sharding; every other leaf is replicated."""
  table: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_s = jax.tree.leaves(param_shardings,
                           is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for (path, p), s in zip(flat_p, flat_s):
    table[_path_names(path)] = (tuple(p.shape), s)
  rep = replicated(mesh)

  def one(path, leaf):
    names = _path_names(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for i in range(len(names)):
      hit = table.get(names[i:])
      if hit is not None and hit[0] == shape:
        return hit[1]
    return rep

  return jax.tree_util.tree_map_with_path(one, tree)


def describe(shardings: Any, abstract: Any, limit: int = 12) -> list[str]:
  """Short ``path shape -> spec`` lines of arrays split over > 1 device (startup log)."""
  lines = []
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for (path, leaf), s in zip(flat, specs):
    if getattr(s, "is_fully_replicated", True):
      continue
    spec = getattr(s, "spec", s)
    if any(p is not None for p in spec):
      lines.append(f"{'/'.join(_path_names(path))} {tuple(leaf.shape)} -> {spec}")
  if len(lines) > limit:
    lines = lines[:limit] + [f"... ({len(lines) - limit} more sharded arrays)"]
  return lines
