"""Logical axis names on parameters, and their mapping to a device mesh.

Every parameter created by ``attnlab.nn`` carries logical axis names (one per dimension) in the
standard NNX ``out_sharding`` metadata, e.g. an attention query kernel ``[embed, heads,
head_dim]``. Names used: ``vocab``, ``embed``, ``mlp``, ``heads``, ``kv_heads``, ``head_dim``,
``position`` (learned position table) and ``classes`` (classifier head); ``None`` for a
dimension that is never sharded.

A trainer maps names to mesh axes with rules such as
``[("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor")]``::

    abstract = nnx.eval_shape(lambda: build_model(cfg, vocab_size=V, rngs=nnx.Rngs(0)))
    shardings = logical_to_mesh_sharding(nnx.state(abstract), mesh, rules)

or builds the model directly sharded with ``init_sharded``. Names with no rule are replicated.
``nnx.get_partition_spec(state)`` (inside ``flax.core.spmd.logical_axis_rules(rules)``) gives
the same partition specs, without the divisibility fallback below.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalNames = tuple[str | None, ...]
LogicalRules = Sequence[tuple[str, str | Sequence[str] | None]]

# Names used by attnlab.nn for parameter dimensions (documentation and tests).
LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "position", "classes")


def logical_init(init: Callable[..., Any], names: LogicalNames) -> Callable[..., Any]:
  """Wrap an initializer so its ``nnx.Param`` carries logical axis ``names``.

  Flax's eager sharding is turned off for these variables: it would need a mesh at
  construction and a rule for every logical name. Place parameters with
  ``logical_to_mesh_sharding`` / ``init_sharded`` instead.
  """
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def logical_axes(variable: nnx.Variable) -> LogicalNames | None:
  """The logical names a variable was created with, or None."""
  names = variable.get_metadata().get("out_sharding")
  if names is None or isinstance(names, NamedSharding):
    return None
  return tuple(names)


def _rules_dict(rules: LogicalRules) -> dict[str, tuple[str, ...]]:
  out: dict[str, tuple[str, ...]] = {}
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"rules must be (logical_name, mesh_axis | tuple | None) pairs, got "
                       f"{rule!r}")
    name, axes = rule
    if name in out:  # first rule wins, as in flax.linen
      continue
    if axes is None:
      out[name] = ()
    elif isinstance(axes, str):
      out[name] = (axes,)
    else:
      out[name] = tuple(axes)
  return out


def logical_to_mesh_spec(names: Sequence[str | None] | PartitionSpec, rules: LogicalRules, *,
                         mesh: Mesh | None = None,
                         shape: Sequence[int] | None = None) -> PartitionSpec:
  """Map logical names to a ``PartitionSpec`` of mesh axes.

  A name with no rule is replicated (``None``). A mesh axis already used by an earlier dimension
  is not reused. When ``mesh`` and ``shape`` are given, a dimension the mesh axes do not divide
  is replicated instead of failing at placement.
  """
  table = _rules_dict(rules)
  if mesh is not None:
    for name, axes in table.items():
      unknown = [a for a in axes if a not in mesh.axis_names]
      if unknown:
        raise ValueError(f"rule for logical axis {name!r} names mesh axes {unknown} not in the "
                         f"mesh axis names {tuple(mesh.axis_names)}")
  used: set[str] = set()
  spec: list[Any] = []
  for dim, name in enumerate(names):
    axes = table.get(name, ()) if isinstance(name, str) else ()
    axes = tuple(a for a in axes if a not in used)
    if axes and mesh is not None and shape is not None:
      size = 1
      for a in axes:
        size *= mesh.shape[a]
      if shape[dim] % size:
        axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def logical_to_mesh_sharding(state_or_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """``NamedSharding`` pytree for an ``nnx.State`` (or module) or a pytree of logical specs.

  Args:
    state_or_specs: an ``nnx.State`` / module / pytree whose leaves are ``nnx.Variable`` (their
      ``out_sharding`` logical names are used; variables without names, RNG keys and caches are
      replicated), or a pytree of ``PartitionSpec`` of logical names.
    mesh: the device mesh.
    rules: ``[(logical_name, mesh_axis | (mesh_axes...) | None), ...]``.

  Returns:
    The same structure with ``NamedSharding`` values (inside the variables for a state), usable
    as ``jax.jit(..., out_shardings=...)`` or with ``jax.device_put``.
  """
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
  if isinstance(state_or_specs, nnx.Module):
    state_or_specs = nnx.state(state_or_specs)

  def one(x):
    if isinstance(x, nnx.Variable):
      names = logical_axes(x) or ()
      shape = getattr(x.get_value(), "shape", None)
      names = tuple(names) + (None,) * (len(shape or ()) - len(names))
      return x.replace(NamedSharding(mesh, logical_to_mesh_spec(names, rules, mesh=mesh,
                                                                 shape=shape)))
    if isinstance(x, PartitionSpec):
      return NamedSharding(mesh, logical_to_mesh_spec(tuple(x), rules, mesh=mesh))
    if x is None:
      return None
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, state_or_specs,
                      is_leaf=lambda x: isinstance(x, (nnx.Variable, PartitionSpec)))


def init_sharded(init_fn: Callable[[], nnx.Module], mesh: Mesh, rules: LogicalRules) -> nnx.Module:
  """Build a module with every parameter created directly in its mesh sharding.

  ``init_fn`` builds the module (creating its own ``nnx.Rngs``); it is traced once abstractly to
  read the logical names, then run under ``jax.jit`` with the matching ``out_shardings``.
  """
  abstract = nnx.eval_shape(init_fn)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = logical_to_mesh_sharding(abstract_state, mesh, rules)

  state = jax.jit(lambda: nnx.state(init_fn()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


__all__ = ["LOGICAL_AXES", "logical_init", "logical_axes", "logical_to_mesh_spec",
           "logical_to_mesh_sharding", "init_sharded"]
