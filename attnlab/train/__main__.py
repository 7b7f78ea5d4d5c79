"""``python -m attnlab.train --config configs/lm_bytes.py[:arg] --workdir DIR [overrides]``.

Overrides edit the config: ``--config.total_steps=100``,
``--config.model.attention.mechanism=sigmoid``, ``--config.optimizer.learning_rate=3e-4``;
an unknown key is an error. Running again with the same ``--workdir`` resumes from its newest
checkpoint.

Multi-host: ``--multihost`` calls ``jax.distributed.initialize()`` (auto-detected on Cloud
TPU, Slurm, ...); or give ``--coordinator_address host:port --num_processes N
--process_id i`` (also read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``). See launch/README.md.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/lm_bytes.py or "
    "configs/lm_bytes.py:local.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, tb).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (auto-detects TPU pods, Slurm).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")

flags.mark_flags_as_required(["config", "workdir"])


def _distributed_args() -> dict | None:
  coordinator = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num = _NUM_PROCESSES.value
  if num is None and os.environ.get("JAX_NUM_PROCESSES"):
    num = int(os.environ["JAX_NUM_PROCESSES"])
  pid = _PROCESS_ID.value
  if pid is None and os.environ.get("JAX_PROCESS_ID"):
    pid = int(os.environ["JAX_PROCESS_ID"])
  explicit = dict(coordinator_address=coordinator, num_processes=num, process_id=pid)
  if _MULTIHOST.value:
    return {k: v for k, v in explicit.items() if v is not None}
  if coordinator and num is not None and pid is not None:
    return explicit
  if num is not None or pid is not None:
    raise app.UsageError("--num_processes/--process_id need --coordinator_address (or "
                         "JAX_COORDINATOR_ADDRESS); or pass --multihost to auto-detect.")
  return None


class _QuietLibraries:
  """absl logging filter: drop INFO chatter of orbax (and jax's backend probing)."""

  _NOISY = ("/orbax/", "/jax/_src/xla_bridge.py")

  def filter(self, record) -> bool:
    if record.levelno > 20 or logging.get_verbosity() > logging.INFO:
      return True
    return not any(p in record.pathname for p in self._NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  from attnlab.train import config_lib  # pylint: disable=g-import-not-at-top
  from attnlab.train import trainer  # pylint: disable=g-import-not-at-top
  try:
    # Fail fast, before joining a cluster (the full check runs in train_and_evaluate).
    config_lib.validate_config(_CONFIG.value, check_model=False)
    dist = _distributed_args()
    if dist is not None:
      logging.info("jax.distributed.initialize(%s)", dist)
      jax.distributed.initialize(**dist)
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.NonFiniteError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
