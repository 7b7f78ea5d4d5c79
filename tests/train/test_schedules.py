"""Learning-rate schedules against hand-computed values; optimizer construction."""

import math

import chex
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from attnlab.train import config_lib, optim


def _sched(name, **kw):
  c = ml_collections.ConfigDict(dict(name=name, warmup_steps=10, end_lr_fraction=0.1,
                                     decay_fraction=0.2, decay_shape="linear"))
  c.update(kw)
  return c


def _val(fn, t):
  return float(fn(jnp.asarray(t)))


def test_warmup_cosine_closed_form():
  fn = optim.make_schedule(_sched("warmup_cosine"), learning_rate=1.0, total_steps=110)
  # warmup: t / 10
  assert _val(fn, 0) == 0.0
  assert _val(fn, 5) == pytest.approx(0.5)
  # peak at the end of warmup
  assert _val(fn, 10) == pytest.approx(1.0)
  # halfway through the cosine (t - W = 50 of 100): 0.1 + 0.9 * 0.5 = 0.55
  assert _val(fn, 60) == pytest.approx(0.55, abs=1e-6)
  # a quarter: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
  assert _val(fn, 35) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, abs=1e-6)
  # end and beyond: end value 0.1
  assert _val(fn, 110) == pytest.approx(0.1, abs=1e-6)
  assert _val(fn, 500) == pytest.approx(0.1, abs=1e-6)


def test_wsd_closed_form():
  # T = 100, W = 10, D = round(0.2 * 100) = 20 -> decay from 80 to 100, peak 2.0, end 0.2.
  fn = optim.make_schedule(_sched("wsd"), learning_rate=2.0, total_steps=100)
  assert _val(fn, 3) == pytest.approx(0.6)
  assert _val(fn, 10) == pytest.approx(2.0)
  assert _val(fn, 50) == pytest.approx(2.0)
  assert _val(fn, 79) == pytest.approx(2.0)
  assert _val(fn, 80) == pytest.approx(2.0)
  assert _val(fn, 90) == pytest.approx(2.0 - 1.8 * 0.5)  # 1.1
  assert _val(fn, 95) == pytest.approx(2.0 - 1.8 * 0.75)  # 0.65
  assert _val(fn, 100) == pytest.approx(0.2)
  sqrt = optim.make_schedule(_sched("wsd", decay_shape="sqrt"), learning_rate=2.0,
                             total_steps=100)
  assert _val(sqrt, 85) == pytest.approx(0.2 + 1.8 * (1 - math.sqrt(0.25)))  # 1.1
  cos = optim.make_schedule(_sched("wsd", decay_shape="cosine"), learning_rate=2.0,
                            total_steps=100)
  assert _val(cos, 90) == pytest.approx(0.2 + 1.8 * 0.5, abs=1e-6)


def test_constant_and_linear():
  const = optim.make_schedule(_sched("constant"), learning_rate=0.5, total_steps=100)
  assert [_val(const, t) for t in (0, 5, 10, 99)] == pytest.approx([0.0, 0.25, 0.5, 0.5])
  lin = optim.make_schedule(_sched("linear", warmup_steps=0), learning_rate=1.0,
                            total_steps=100)
  assert _val(lin, 0) == pytest.approx(1.0)
  assert _val(lin, 50) == pytest.approx(1.0 - 0.9 * 0.5)


def test_optimizer_uses_schedule_and_clipping():
  c = config_lib.base_config()
  c.total_steps = 20
  c.optimizer.learning_rate = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.weight_decay = 0.0
  c.schedule.name = "constant"
  c.schedule.warmup_steps = 0
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.0
  tx, sched = optim.make_optimizer(c)
  params = {"w": jnp.ones((3,))}
  state = tx.init(params)
  grads = {"w": jnp.full((3,), 10.0)}  # norm 17.3 -> clipped to norm 1
  updates, _ = tx.update(grads, state, params)
  chex.assert_trees_all_close(optax.tree.norm(updates), 0.1, rtol=1e-5)
  assert float(sched(0)) == pytest.approx(0.1)


@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_every_optimizer_builds(name):
  c = config_lib.base_config()
  c.optimizer.name = name
  tx, _ = optim.make_optimizer(c)
  params = {"w": jnp.ones((2, 2)), "b": jnp.zeros((2,))}
  updates, _ = tx.update(params, tx.init(params), params)
  assert set(updates) == {"w", "b"}
