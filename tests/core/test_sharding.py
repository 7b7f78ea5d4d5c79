"""Sharded calls equal unsharded ones: values and q/k/v gradients, for every implementation.

Batch-sharded over eight CPU devices (tests/conftest.py) under an explicit-axis mesh (the
default of ``jax.make_mesh``), an auto mesh, ``jax.shard_map`` and ``jax.pmap``. Under an
explicit mesh the Pallas kernel (interpret mode on CPU) runs per device block inside its own
``shard_map`` (batch and head sharding, bias and ALiBi included); it refuses masks holding
arrays there and varying shard_map inputs (``check_vma=True``); "auto" then falls back.
"""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import attnlab

N = 8  # devices (tests/conftest.py)
# (implementation, mechanism, head_dim); pallas needs a supported head_dim.
CASES = [("xla", "softmax", 8), ("chunked", "softmax", 8), ("chunked", "sigmoid", 8),
         ("pallas", "softmax", 64)]
IDS = [f"{impl}-{mech}" for impl, mech, _ in CASES]
MODES = ["explicit", "auto", "shard_map", "pmap"]


def _inputs(d):
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (N, 32, 2, d), jnp.float32)
  k = jax.random.normal(ks[1], (N, 32, 1, d), jnp.float32)  # GQA: 2 query heads per kv head
  v = jax.random.normal(ks[2], (N, 32, 1, d), jnp.float32)
  w = jax.random.normal(ks[3], (N, 32, 2, d), jnp.float32)  # cotangent weights
  return q, k, v, w


def _attn(impl, mech):
  extra = {} if impl == "xla" else {"block_q": 16, "block_k": 16}
  return lambda q, k, v: attnlab.attention(q, k, v, is_causal=True, mechanism=mech,
                                           implementation=impl, **extra)


def _value_and_grads(attn, w):
  """q, k, v -> (out, (dq, dk, dv)) of sum(attn(q, k, v) * w)."""
  def loss(q, k, v, w):
    out = attn(q, k, v)
    return jnp.sum(out * w), out
  fn = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
  return lambda q, k, v: tuple(reversed(fn(q, k, v, w)))


def _run(mode, attn, q, k, v, w, check_vma=True):
  if mode in ("explicit", "auto"):
    axis_type = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((N,), ("data",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
      args = jax.device_put((q, k, v, w), NamedSharding(mesh, P("data")))
      out, grads = jax.jit(lambda q, k, v, w: _value_and_grads(attn, w)(q, k, v))(*args)
      if mode == "explicit":  # the results keep the batch sharding in their types
        assert jax.typeof(out).sharding.spec[0] == "data"
        assert jax.typeof(grads[0]).sharding.spec[0] == "data"
    return out, grads
  if mode == "shard_map":
    mesh = jax.make_mesh((N,), ("data",), axis_types=(AxisType.Auto,))
    sm = jax.shard_map(attn, mesh=mesh, in_specs=P("data"), out_specs=P("data"),
                       check_vma=check_vma)
    return jax.jit(_value_and_grads(sm, w))(q, k, v)
  assert mode == "pmap"
  split = lambda x: x.reshape(N, 1, *x.shape[1:])
  out, grads = jax.pmap(lambda q, k, v, w: _value_and_grads(attn, w)(q, k, v))(
      *map(split, (q, k, v, w)))
  merge = lambda x: x.reshape(N, *x.shape[2:])
  return merge(out), jax.tree.map(merge, grads)


@pytest.fixture(scope="module")
def references():
  cache = {}

  def get(impl, mech, d):
    if (impl, mech) not in cache:
      q, k, v, w = _inputs(d)
      cache[impl, mech] = jax.jit(_value_and_grads(_attn(impl, mech), w))(q, k, v)
    return cache[impl, mech]
  return get


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl,mech,d", CASES, ids=IDS)
def test_sharded_equals_unsharded(references, impl, mech, d, mode):
  q, k, v, w = _inputs(d)
  if impl == "pallas" and mode == "shard_map":
    # pallas_call outputs carry no varying axes: refused under check_vma=True, runs without.
    with pytest.raises(ValueError, match="check_vma=False"):
      _run(mode, _attn(impl, mech), q, k, v, w)
  out, grads = _run(mode, _attn(impl, mech), q, k, v, w, check_vma=impl != "pallas")
  ref_out, ref_grads = references(impl, mech, d)
  chex.assert_trees_all_close(out, ref_out, atol=2e-5, rtol=2e-5)
  chex.assert_trees_all_close(grads, ref_grads, atol=2e-5, rtol=2e-5)


def test_pallas_explicit_mesh_batch_and_heads_with_bias_and_alibi():
  """A 2-D explicit mesh sharding batch ("data") and heads ("model"), with a per-batch bias
  and per-head ALiBi slopes: values and q/k/v/bias gradients equal the unsharded dense ones,
  and the output keeps both shardings."""
  ks = jax.random.split(jax.random.key(1), 6)
  q = jax.random.normal(ks[0], (4, 32, 4, 64), jnp.float32)
  k = jax.random.normal(ks[1], (4, 32, 2, 64), jnp.float32)
  v = jax.random.normal(ks[2], (4, 32, 2, 64), jnp.float32)
  bias = jax.random.normal(ks[3], (4, 1, 32, 32), jnp.float32)
  slopes = jnp.array([0.5, 0.25, 0.125, 0.0625], jnp.float32)

  def loss(impl):
    def fn(q, k, v, bias):
      extra = {} if impl == "xla" else {"block_q": 16, "block_k": 16}
      out = attnlab.attention(q, k, v, is_causal=True, bias=bias, alibi_slopes=slopes,
                              implementation=impl, **extra)
      return jnp.sum(out * out), out
    return jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)

  (_, ref_out), ref_grads = jax.jit(loss("xla"))(q, k, v, bias)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    qkv = (jax.device_put(q, NamedSharding(mesh, P("data", None, "model"))),
           *jax.device_put((k, v), NamedSharding(mesh, P("data"))))
    b = jax.device_put(bias, NamedSharding(mesh, P("data")))
    (_, out), grads = jax.jit(loss("pallas"))(*qkv, b)
    # 2 kv heads do not split over 4 "model" devices: the heads are gathered, batch stays.
    assert jax.typeof(out).sharding.spec[0] == "data"
  chex.assert_trees_all_close(out, ref_out, atol=2e-5, rtol=2e-5)
  chex.assert_trees_all_close(grads, ref_grads, atol=5e-5, rtol=5e-5)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    qkv = jax.device_put((q, k, v), NamedSharding(mesh, P("data", None, "model")))
    b = jax.device_put(bias, NamedSharding(mesh, P("data")))
    (_, out), grads = jax.jit(loss("pallas"))(*qkv, b)
    assert jax.typeof(out).sharding.spec[:3] == ("data", None, "model")
  chex.assert_trees_all_close(out, ref_out, atol=2e-5, rtol=2e-5)
  chex.assert_trees_all_close(grads, ref_grads, atol=5e-5, rtol=5e-5)


def test_auto_under_explicit_mesh_with_array_mask_skips_pallas(monkeypatch):
  """A mask holding arrays (segment ids) under an explicit mesh: "pallas" refuses it with a
  clear error and "auto" (forced past the dense path) runs chunked, equal to "xla"."""
  monkeypatch.setattr(attnlab.core.api, "AUTO_DENSE_LIMIT_BYTES", 0)
  q, k, v, w = _inputs(64)
  ids = jnp.repeat(jnp.arange(4)[None], N, axis=0).repeat(8, axis=1)  # [N, 32]
  mask = attnlab.masks.SegmentMask(ids, ids)

  def attn(impl):
    return lambda q, k, v: attnlab.attention(q, k, v, mask=mask, is_causal=True,
                                             implementation=impl, block_q=16, block_k=16)
  mesh = jax.make_mesh((N,), ("data",), axis_types=(AxisType.Explicit,))
  with jax.set_mesh(mesh):
    args = jax.device_put((q, k, v), NamedSharding(mesh, P("data")))
    with pytest.raises(ValueError, match=r"mask \(And\) holds arrays"):
      jax.jit(attn("pallas"))(*args)
    chosen = []
    jax.jit(lambda q, k, v: chosen.append(attnlab.core.api.choose_implementation(
        "softmax", "auto", q=q, k=k, v=v, mask=mask, block_q=16, block_k=16)) or q)(*args)
    assert chosen == ["chunked"]
    out, grads = _run("explicit", attn("auto"), q, k, v, w)
  ref_out, ref_grads = jax.jit(_value_and_grads(
      lambda q, k, v: attnlab.attention(q, k, v, mask=mask, is_causal=True,
                                        implementation="xla"), w))(q, k, v)
  chex.assert_trees_all_close(out, ref_out, atol=2e-5, rtol=2e-5)
  chex.assert_trees_all_close(grads, ref_grads, atol=2e-5, rtol=2e-5)
