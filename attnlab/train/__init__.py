"""Config-driven trainer: ``python -m attnlab.train --config configs/lm_bytes.py --workdir DIR``.

Modules: ``config_lib`` (base config, validation), ``optim`` (schedules, optimizers),
``sharding`` (mesh, shardings, global batches), ``steps`` (pure train / eval steps),
``checkpointing`` (orbax, checksums, fallback), ``distributed`` (joining a job, barriers),
``metrics`` (metrics.jsonl, TensorBoard, MFU), ``trainer`` (the
loop), ``plot`` (curves to PNG), ``launch_local`` (multi-process simulation on one machine).
The names below are imported lazily, so ``python -m attnlab.train.plot`` stays light.
"""

import importlib

_LAZY = {
    "ConfigError": "config_lib", "base_config": "config_lib", "validate_config": "config_lib",
    "make_optimizer": "optim", "make_schedule": "optim",
    "NonFiniteError": "trainer", "DataError": "trainer", "WorkdirError": "trainer",
    "Setup": "trainer", "evaluate": "trainer",
    "train_and_evaluate": "trainer",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"attnlab.train.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'attnlab.train' has no attribute {name!r}")


__all__ = sorted(_LAZY)
