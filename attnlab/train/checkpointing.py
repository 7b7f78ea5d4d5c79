"""Orbax checkpoints under ``DIR/checkpoints/<step>/`` with three items:

  state     the train state pytree (``step``, ``params``, ``opt_state``, ``model_state``),
            sharded arrays written by every process (``ocp.args.StandardSave``)
  data_iter the train data iterator, one ``process_<i>-of-<n>.json`` per process (grain)
  config    the run's config as JSON (provenance; not read back)

The newest ``keep_checkpoints`` are kept. ``restore_latest`` restores params / optimizer state
into the given shardings and the data iterator in place, so that training continues with the
exact batches and numbers of an uninterrupted run.

A run's config is also written once, atomically, to ``DIR/config.json`` when the run starts
(:func:`write_run_config`). On resume, :func:`check_model_config` compares its ``model``
section with the config being run, and :meth:`Checkpointer.restore` compares the checkpoint's
array shapes with the abstract state before reading any array (covering workdirs without a
``config.json`` and shapes that the data decides, such as the vocabulary). Either mismatch
raises :class:`WorkdirError` with a one-line message naming the differences; restoring into
wrong shapes never reaches orbax.
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
CONFIG_FILE = "config.json"

_UNSET = object()


class WorkdirError(ValueError):
  """The workdir cannot be used for this config: not a directory, or its checkpoints were
  written by a different model. The message is one line."""


def write_run_config(workdir: str | os.PathLike, config_json: str) -> Path:
  """Write ``DIR/config.json`` atomically (a temporary file, then ``os.replace``)."""
  path = Path(workdir) / CONFIG_FILE
  tmp = path.with_name(f".{CONFIG_FILE}.tmp.{os.getpid()}")
  tmp.write_text(config_json)
  os.replace(tmp, path)
  return path


def read_run_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """``DIR/config.json`` as a dict; None if there is none (or it is unreadable: warning)."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    logging.warning("Ignoring %s (%s); checkpoint shapes are still checked.", path, e)
    return None
  return saved if isinstance(saved, dict) else None


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}.{k}"))
    return out
  return {prefix: tree}


def model_config_differences(saved: dict[str, Any], current: dict[str, Any],
                             defaults: dict[str, Any] | None = None
                             ) -> list[tuple[str, Any, Any]]:
  """``[(dotted key, saved value, current value)]`` for every differing ``model.*`` key.

  All three are JSON-like dicts (tuples as lists). A key missing on one side (a config
  written by an older or newer attnlab) counts as its value in `defaults` if that has it.
  """
  a, b = _flatten(saved, "model"), _flatten(current, "model")
  d = _flatten(defaults or {}, "model")
  diffs = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, d.get(key, _UNSET)), b.get(key, d.get(key, _UNSET))
    if va != vb:
      diffs.append((key, va, vb))
  return diffs


def _show(value: Any) -> str:
  if value is _UNSET:
    return "<unset>"
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def check_model_config(workdir: str | os.PathLike, current: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> bool:
  """Compare ``config.model`` (JSON-like `current`) with ``DIR/config.json``'s model section.

  Returns False if there is no saved config to compare with, True if they agree; raises
  :class:`WorkdirError` listing every differing key otherwise.
  """
  saved = read_run_config(workdir)
  if saved is None or not isinstance(saved.get("model"), dict):
    return False
  diffs = model_config_differences(saved["model"], current, defaults)
  if diffs:
    where = Path(workdir).absolute()
    if len(diffs) == 1:
      key, old, new = diffs[0]
      what = f"{key}={_show(old)}, the config asks for {_show(new)}"
    else:
      what = ", ".join(f"{k}={_show(old)} (the config asks for {_show(new)})"
                       for k, old, new in diffs)
    raise WorkdirError(f"the checkpoint in {where} was written with {what}; resume with the "
                       f"model settings of {where / CONFIG_FILE} or use a new --workdir")
  return True


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """``{"params.embedder.tokens.embedding": shape}`` for every array leaf of `tree`."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = getattr(leaf, "shape", None)
    if shape is not None:
      out[".".join(_key_name(p) for p in path)] = tuple(int(n) for n in shape)
  return out


class Checkpointer:
  """``ocp.CheckpointManager`` for the train state, the data iterator and the config."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._closed = False

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

  def check_shapes(self, step: int, abstract_state: Any) -> None:
    """Raise :class:`WorkdirError` if checkpoint `step` holds other arrays or shapes than
    `abstract_state` (read from the checkpoint's metadata; no array is read)."""
    path = self.directory / str(step) / "state"
    try:
      handler = ocp.StandardCheckpointHandler()
      try:
        meta = handler.metadata(path)
      finally:
        handler.close()
    except Exception as e:  # pylint: disable=broad-except  (unknown layout: restore decides)
      logging.warning("Could not read the metadata of %s (%s); not checking shapes.", path, e)
      return
    saved = _shapes(getattr(meta, "item_metadata", meta))
    wanted = _shapes(abstract_state)
    problems = []  # (not a parameter, key, text): parameters first, optimizer state after
    for k in sorted(set(saved) | set(wanted)):
      if k not in saved:
        text = f"{k} is missing from the checkpoint"
      elif k not in wanted:
        text = f"the checkpoint has {k}, the config does not"
      elif saved[k] != wanted[k]:
        text = f"{k} is {saved[k]} in the checkpoint, {wanted[k]} in the config"
      else:
        continue
      problems.append((not k.startswith("params."), k, text))
    problems = [text for _, _, text in sorted(problems)]
    if problems:
      shown = "; ".join(problems[:4])
      more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
      raise WorkdirError(
          f"the checkpoint {self.directory / str(step)} does not fit the configured model: "
          f"{shown}{more}; resume with the model config it was written with or use a new "
          "--workdir")

  def restore(self, step: int, abstract_state: Any,
              data_iter: grain.DatasetIterator | None) -> Any:
    """Restore `step` into `abstract_state`'s shapes/shardings; `data_iter` in place.

    Checks the shapes first (:meth:`check_shapes`); an orbax shape / structure error that
    still happens is re-raised as a one-line :class:`WorkdirError`.
    """
    self.check_shapes(step, abstract_state)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data_iter"] = data_lib.iterator_checkpoint_args(data_iter, restore=True)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      if "shape" in str(e) or "tree structure" in str(e):
        raise WorkdirError(f"cannot restore the checkpoint {self.directory / str(step)} into "
                           f"the configured model: {first}") from e
      raise
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
    """Wait for pending saves and release the manager (a second call does nothing)."""
    if self._closed:
      return
    self._closed = True
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of jax arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
