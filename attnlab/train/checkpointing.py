"""Orbax checkpoints under ``DIR/checkpoints/<step>/`` with three items:

  state     the train state pytree (``step``, ``params``, ``opt_state``, ``model_state``),
            sharded arrays written by every process (``ocp.args.StandardSave``)
  data_iter the train data iterator, one ``process_<i>-of-<n>.json`` per process (grain)
  config    the run's config as JSON (provenance; not read back)

The newest ``keep_checkpoints`` are kept. ``restore_latest`` restores params / optimizer state
into the given shardings and the data iterator in place, so that training continues with the
exact batches and numbers of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from attnlab import data as data_lib

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """``ocp.CheckpointManager`` for the train state, the data iterator and the config."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator,
           config_json: str | None = None) -> None:
    items = dict(state=ocp.args.StandardSave(state),
                 data_iter=data_lib.iterator_checkpoint_args(data_iter))
    if config_json is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config_json))
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: Any,
              data_iter: grain.DatasetIterator | None) -> Any:
    """Restore `step` into `abstract_state`'s shapes/shardings; `data_iter` in place."""
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data_iter"] = data_lib.iterator_checkpoint_args(data_iter, restore=True)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_latest(self, abstract_state: Any, data_iter: grain.DatasetIterator | None
                     ) -> tuple[int | None, Any]:
    step = self.latest_step()
    if step is None:
      return None, None
    logging.info("Restoring checkpoint %s/%d", self.directory, step)
    return step, self.restore(step, abstract_state, data_iter)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of jax arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
