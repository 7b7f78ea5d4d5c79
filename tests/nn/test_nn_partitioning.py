"""Logical axis metadata on parameters and its mapping to a mesh."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from attnlab.models import build_model, default_model_config
from attnlab.nn import partitioning as part

RULES = [("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"),
         ("vocab", "tensor")]


def tiny_cfg(**kw):
  cfg = default_model_config()
  cfg.update(dict(num_layers=1, d_model=16, num_heads=4, num_kv_heads=2, mlp_dim=32, max_len=16,
                  mlp="swiglu", position="learned"))
  cfg.update(kw)
  return cfg


def mesh_1x1():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tensor"))


def test_every_param_has_logical_names():
  model = build_model(tiny_cfg(), vocab_size=32, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert leaves
  for v in leaves:
    names = part.logical_axes(v)
    assert names is not None and len(names) == v.get_value().ndim, (v, names)
    assert set(names) <= set(part.LOGICAL_AXES)


def test_logical_to_mesh_sharding_on_one_device_mesh():
  model = build_model(tiny_cfg(), vocab_size=32, rngs=nnx.Rngs(0))
  mesh = mesh_1x1()
  shardings = part.logical_to_mesh_sharding(nnx.state(model), mesh, RULES)
  q = shardings["stack"]["blocks"][0]["attention"]["q"]["kernel"].get_value()
  assert q == NamedSharding(mesh, P("fsdp", "tensor", None))
  k = shardings["stack"]["blocks"][0]["attention"]["k"]["kernel"].get_value()
  assert k == NamedSharding(mesh, P("fsdp", "tensor", None))
  emb = shardings["embedder"]["tokens"]["embedding"].get_value()
  assert emb == NamedSharding(mesh, P("tensor", "fsdp"))
  pos = shardings["embedder"]["learned"]["embed"]["embedding"].get_value()
  assert pos == NamedSharding(mesh, P(None, "fsdp"))  # "position" has no rule: replicated
  # Usable for placement.
  state = jax.device_put(nnx.state(model), shardings)
  placed = state["stack"]["blocks"][0]["attention"]["q"]["kernel"].get_value()
  assert placed.sharding == q
  chex.assert_trees_all_equal(nnx.state(state, nnx.Param), nnx.state(model, nnx.Param))


def test_partition_specs_pytree_and_rules():
  mesh = mesh_1x1()
  specs = {"a": P("embed", "mlp"), "b": P("vocab", None)}
  out = part.logical_to_mesh_sharding(specs, mesh, RULES)
  assert out["a"] == NamedSharding(mesh, P("fsdp", "tensor"))
  assert out["b"] == NamedSharding(mesh, P("tensor", None))
  # A mesh axis is used at most once per spec; unknown names replicate.
  assert part.logical_to_mesh_spec(("mlp", "heads", "foo"), RULES) == P("tensor", None, None)
  assert part.logical_to_mesh_spec(("embed",), [("embed", ("fsdp", "tensor"))]) == P(
      ("fsdp", "tensor"))
  with pytest.raises(ValueError, match="not in the mesh axis names"):
    part.logical_to_mesh_sharding(specs, mesh, [("embed", "data")])
  with pytest.raises(ValueError, match="pairs"):
    part.logical_to_mesh_spec(("embed",), ["embed"])
  with pytest.raises(TypeError, match="Mesh"):
    part.logical_to_mesh_sharding(specs, "mesh", RULES)


def test_nnx_get_partition_spec_agrees():
  from flax.core import spmd
  model = build_model(tiny_cfg(), vocab_size=32, rngs=nnx.Rngs(0))
  with spmd.logical_axis_rules(RULES):
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  q = specs["stack"]["blocks"][0]["mlp"]["gate"]["kernel"].get_value()
  assert q == P("fsdp", "tensor")


def test_init_sharded():
  mesh = mesh_1x1()
  cfg = tiny_cfg()
  model = part.init_sharded(lambda: build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0)), mesh,
                            RULES)
  k = model.stack.blocks[0].attention.q.kernel.get_value()
  assert k.sharding == NamedSharding(mesh, P("fsdp", "tensor", None))
  ref = build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))
  chex.assert_trees_all_close(k, ref.stack.blocks[0].attention.q.kernel.get_value(), rtol=1e-7)
