"""Learning-rate schedules and optax optimizers from ``config.schedule`` / ``config.optimizer``.

Schedules are functions of the update count ``t`` (0 for the first update, as optax passes
it), with peak ``p = optimizer.learning_rate``, ``W = schedule.warmup_steps``,
``T = total_steps`` and ``E = schedule.end_lr_fraction * p``. All start with a linear warmup
``p * t / W`` for ``t < W``; then (a ``W`` larger than ``T`` is clamped to ``T``, with a
warning, so that a short run such as ``--config.total_steps=20`` still ends its warmup):

  constant       ``p``
  warmup_cosine  ``E + (p - E) * (1 + cos(pi * u)) / 2``, ``u = min(1, (t - W) / (T - W))``
  linear         ``p - (p - E) * u``, same ``u``
  wsd            warmup-stable-decay (e.g. arXiv 2404.06395, 2405.18392): ``p`` until the
                 decay starts at ``S = T - D`` with ``D = round(decay_fraction * T)``
                 (``S >= W``), then with ``v = min(1, (t - S) / D)`` and
                 ``schedule.decay_shape``: "linear" ``p - (p - E) * v``, "sqrt"
                 ``E + (p - E) * (1 - sqrt(v))``, "cosine" ``E + (p - E) * (1 + cos(pi v)) / 2``

Optimizers (``optimizer.name``): "adamw" (decoupled weight decay), "adam" (no decay), "lion",
"sgd" (``momentum``, ``nesterov``, decoupled weight decay). Weight decay applies to
parameters with ``ndim >= 2`` only (matrices and embeddings; not biases or norm scales).
``grad_clip_norm > 0`` clips the global gradient norm first.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging

from attnlab.train.config_lib import ConfigDict, ConfigError, DECAY_SHAPES, SCHEDULES

Schedule = Callable[[Any], jax.Array]


def make_schedule(schedule_cfg: ConfigDict, *, learning_rate: float, total_steps: int
                  ) -> Schedule:
  """A jit-able ``t -> learning rate`` (float32) from ``config.schedule``.

  ``warmup_steps > total_steps`` is clamped to ``total_steps`` (one warning).
  """
  name = schedule_cfg.name
  if name not in SCHEDULES:
    raise ConfigError(f"unknown schedule {name!r}; choose one of {list(SCHEDULES)}")
  peak = float(learning_rate)
  end = float(schedule_cfg.end_lr_fraction) * peak
  warmup = int(schedule_cfg.warmup_steps)
  total = int(total_steps)
  if warmup > total:
    logging.warning("schedule.warmup_steps=%d exceeds total_steps=%d; clamping the warmup "
                    "to %d steps.", warmup, total, total)
    warmup = total
  decay_steps = max(1, int(round(float(schedule_cfg.decay_fraction) * total)))
  decay_start = max(warmup, total - decay_steps)
  shape = schedule_cfg.decay_shape
  if shape not in DECAY_SHAPES:
    raise ConfigError(f"unknown decay_shape {shape!r}; choose one of {list(DECAY_SHAPES)}")

  def fn(t):
    t = jnp.asarray(t, jnp.float32)
    warm = peak * t / max(warmup, 1)
    if name == "constant":
      after = jnp.full_like(t, peak)
    elif name in ("warmup_cosine", "linear"):
      u = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
      if name == "warmup_cosine":
        after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * u))
      else:
        after = peak - (peak - end) * u
    else:  # wsd
      v = jnp.clip((t - decay_start) / decay_steps, 0.0, 1.0)
      if shape == "linear":
        decayed = peak - (peak - end) * v
      elif shape == "sqrt":
        decayed = end + (peak - end) * (1.0 - jnp.sqrt(v))
      else:
        decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * v))
      after = jnp.where(t < decay_start, peak, decayed)
    return jnp.where(t < warmup, warm, after).astype(jnp.float32)

  return fn


def _decay_mask(params):
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(config: ConfigDict) -> tuple[optax.GradientTransformation, Schedule]:
  """``(tx, schedule)`` from ``config.optimizer``, ``config.schedule``, ``config.total_steps``."""
  opt = config.optimizer
  schedule = make_schedule(config.schedule, learning_rate=opt.learning_rate,
                           total_steps=config.total_steps)
  wd = float(opt.weight_decay)
  if opt.name == "adamw":
    core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd,
                       mask=_decay_mask)
  elif opt.name == "adam":
    core = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == "lion":
    core = optax.lion(schedule, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=_decay_mask)
  elif opt.name == "sgd":
    parts = []
    if wd:
      parts.append(optax.masked(optax.add_decayed_weights(wd), _decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None,
                           nesterov=bool(opt.nesterov)))
    core = optax.chain(*parts)
  else:
    raise ConfigError(f"unknown optimizer {opt.name!r}")
  if opt.grad_clip_norm and opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(float(opt.grad_clip_norm)), core)
  else:
    tx = core
  return tx, schedule
