"""The sharded train step equals the single-device one; gradient accumulation equals one big
batch."""

import chex
import jax
import numpy as np

from attnlab.train import sharding as sharding_lib
from attnlab.train import trainer


def _batches(config, n):
  it = trainer.make_train_iterator(config)
  return [next(it) for _ in range(n)]


def _run(setup, batches):
  state = setup.init_state()
  losses = []
  for b in batches:
    state, m = setup.train_step(state, setup.global_batch(b))
    losses.append(float(m["train/loss"]))
  return state, losses


def test_sharded_step_matches_single_device(make_config):
  assert jax.device_count() >= 8, "tests/conftest.py forces 8 CPU devices"
  common = dict(batch_size=8, model__num_heads=2, model__num_kv_heads=2)
  one = make_config(mesh__shape=(1, 1, 1), **common)
  many = make_config(mesh__shape=(2, 2, 2), **common)
  # Shard embed over fsdp and mlp/heads/vocab over tensor (the default rules).
  setup1 = trainer.Setup(one, mesh=sharding_lib.make_mesh(one, jax.devices()[:1]))
  setup8 = trainer.Setup(many)
  assert dict(setup8.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  specs = {str(s.spec) for s in jax.tree.leaves(setup8.state_shardings["params"])}
  assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs

  batches = _batches(one, 3)
  state1, losses1 = _run(setup1, batches)
  state8, losses8 = _run(setup8, batches)
  chex.assert_trees_all_close(np.asarray(losses8), np.asarray(losses1), rtol=2e-5)
  # The parameters really live sharded, and agree with the single-device run.
  mlp = state8["params"]["stack"]["blocks"][0]["mlp"]["wi"]["kernel"]
  assert not mlp.sharding.is_fully_replicated
  chex.assert_trees_all_close(state8["params"], state1["params"], rtol=1e-4, atol=1e-6)
  # The optimizer moments (Adam mu, nu) follow the parameters' sharding.
  moments = [x for x in jax.tree.leaves(state8["opt_state"]) if x.shape == mlp.shape]
  assert len(moments) >= 2 and all(x.sharding == mlp.sharding for x in moments)


def test_grad_accumulation_equals_big_batch(make_config):
  # SGD: the update is linear in the gradient, so the comparison is tight.
  common = dict(batch_size=16, optimizer__name="sgd", optimizer__momentum=0.9,
                schedule__warmup_steps=0, schedule__name="constant", mesh__shape=(2, 2, 2),
                model__num_heads=2)
  big = make_config(grad_accum_steps=1, **common)
  acc = make_config(grad_accum_steps=4, **common)
  batches = _batches(big, 2)
  state_b, losses_b = _run(trainer.Setup(big), batches)
  state_a, losses_a = _run(trainer.Setup(acc), batches)
  chex.assert_trees_all_close(np.asarray(losses_a), np.asarray(losses_b), rtol=1e-5)
  chex.assert_trees_all_close(state_a["params"], state_b["params"], rtol=1e-4, atol=1e-6)
