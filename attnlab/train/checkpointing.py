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

Integrity. After orbax has finalised a save (all processes' files in place, the step folder
renamed from its temporary name), process 0 writes ``<step>/attnlab_checksums.json``: the size
and sha256 of every file of the step (the arrays, orbax's metadata and manifests, the
data-iterator JSON of every process, the partial metrics window), atomically (a temporary
file, then ``os.replace``). :meth:`Checkpointer.restore_newest` verifies a step before reading
it; a step that fails (a missing, truncated or altered file, or an orbax error while
restoring) is moved to ``checkpoints/corrupt/<step>`` (never deleted) with one log line, and
the next older step is tried. A step without a checksum file (written by an attnlab before
checksums, or killed between orbax's commit and the checksum write) is restored unverified,
with a warning: orbax's own errors still move it aside, and a non-finite loss before the next
checkpoint does too (see the trainer). Verifying reads the whole step once (sha256: ~450 MB/s
on one busy core of the 2-core CI machine), and so does writing the checksums after a save.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
CHECKSUM_FILE = "attnlab_checksums.json"
CORRUPT_DIR = "corrupt"
WINDOW_ITEM = "train_window"

_UNSET = object()


class WorkdirError(ValueError):
  """The workdir cannot be used for this config: not a directory, or its checkpoints were
  written by a different model. The message is one line."""


class NoUsableCheckpointError(WorkdirError):
  """Every checkpoint of the workdir was damaged (and moved aside); one-line message."""


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def file_digests(step_dir: str | os.PathLike) -> dict[str, list]:
  """``{relative path: [size, sha256 hex]}`` of every file under `step_dir` (the checksum
  file itself excluded)."""
  root = Path(step_dir)
  out = {}
  for path in sorted(root.rglob("*")):
    if not path.is_file() or path.name == CHECKSUM_FILE:
      continue
    with path.open("rb") as f:
      digest = hashlib.file_digest(f, "sha256").hexdigest()
    out[path.relative_to(root).as_posix()] = [path.stat().st_size, digest]
  return out


def write_checksums(step_dir: str | os.PathLike) -> Path:
  """Write ``step_dir/attnlab_checksums.json`` atomically (temporary file, os.replace)."""
  root = Path(step_dir)
  record = {"format": 1, "files": file_digests(root)}
  path = root / CHECKSUM_FILE
  tmp = root / f".{CHECKSUM_FILE}.tmp.{os.getpid()}"
  with tmp.open("w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def verify_checksums(step_dir: str | os.PathLike) -> str | None:
  """None if every file listed in the checksum file is present with its size and sha256;
  else what is wrong (one line). :class:`FileNotFoundError` if there is no checksum file."""
  root = Path(step_dir)
  path = root / CHECKSUM_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  try:
    files = json.loads(path.read_text())["files"]
    expected = {str(k): (int(v[0]), str(v[1])) for k, v in files.items()}
  except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
    return f"its checksum file is unreadable ({_one_line(e)})"
  problems = []
  for rel, (size, digest) in sorted(expected.items()):
    f = root / rel
    if not f.is_file():
      problems.append(f"{rel} is missing")
      continue
    actual = f.stat().st_size
    if actual != size:
      problems.append(f"{rel} has {actual} bytes, {size} when saved")
      continue
    with f.open("rb") as fh:
      if hashlib.file_digest(fh, "sha256").hexdigest() != digest:
        problems.append(f"{rel} does not match its sha256")
  if not problems:
    return None
  more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
  return "; ".join(problems[:2]) + more


@dataclasses.dataclass
class Restored:
  """What :meth:`Checkpointer.restore_newest` found: the step, the state, the metrics window
  saved with it (per-step records since the last logged step; [] for older checkpoints),
  whether its checksums verified, and the steps moved aside on the way."""
  step: int
  state: Any
  window: list[dict[str, float]]
  verified: bool
  moved: list[int]


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
  """``ocp.CheckpointManager`` for the train state, the data iterator, the config and the
  partial metrics window, plus the checksums of every saved step (see the module
  docstring)."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._primary = jax.process_index() == 0
    self._pending: list[int] = []  # saved, checksums not yet written
    self._closed = False
    self._moves = 0

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator,
           config_json: str | None = None,
           window: list[dict[str, float]] | None = None) -> None:
    """Save `step` (in the background if async); its checksums follow once orbax has
    finalised it (:meth:`poll`, :meth:`wait`, the next save or :meth:`close`)."""
    self._finalize_pending(block=True)  # orbax waits for the previous save anyway
    items = dict(state=ocp.args.StandardSave(state),
                 data_iter=data_lib.iterator_checkpoint_args(data_iter))
    if config_json is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config_json))
    if window is not None:
      items[WINDOW_ITEM] = ocp.args.JsonSave({"records": window})
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._pending.append(step)
    if not self.manager.is_saving_in_progress():
      self._finalize_pending(block=True)

  def poll(self) -> None:
    """Write the checksums of saves that have finished (cheap; call once per step)."""
    if self._pending and not self.manager.is_saving_in_progress():
      self._finalize_pending(block=True)

  def _finalize_pending(self, block: bool) -> None:
    if not self._pending:
      return
    if block:
      self.manager.wait_until_finished()
    steps, self._pending = self._pending, []
    if not self._primary:
      return
    for step in steps:
      d = self.step_dir(step)
      if d.is_dir():  # not already removed by max_to_keep
        write_checksums(d)

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
      logging.warning("Could not read the metadata of %s (%s); not checking shapes.", path,
                      _one_line(e))
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

    No checksum check (see :meth:`restore_newest`). Checks the shapes first
    (:meth:`check_shapes`); an orbax shape / structure error that still happens is re-raised
    as a one-line :class:`WorkdirError`.
    """
    return self._restore(step, abstract_state, data_iter)[0]

  def _restore(self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator | None
               ) -> tuple[Any, list[dict[str, float]]]:
    self.check_shapes(step, abstract_state)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data_iter"] = data_lib.iterator_checkpoint_args(data_iter, restore=True)
    has_window = (self.step_dir(step) / WINDOW_ITEM).is_dir()
    if has_window:
      items[WINDOW_ITEM] = ocp.args.JsonRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      if "shape" in str(e) or "tree structure" in str(e):
        raise WorkdirError(f"cannot restore the checkpoint {self.directory / str(step)} into "
                           f"the configured model: {first}") from e
      raise
    window = []
    if has_window:
      records = restored[WINDOW_ITEM]["records"]
      window = [{str(k): float(v) for k, v in r.items()} for r in records]
    return restored["state"], window

  def move_aside(self, step: int, why: str) -> Path:
    """Move checkpoint `step` to ``checkpoints/corrupt/<step>`` (process 0; a suffix if that
    exists), log one line, and forget it. Every process must call this (a barrier)."""
    from attnlab.train import distributed  # pylint: disable=g-import-not-at-top
    src = self.step_dir(step)
    dst = self.directory / CORRUPT_DIR / str(step)
    n = 0
    while dst.exists():
      n += 1
      dst = self.directory / CORRUPT_DIR / f"{step}.{n}"
    if self._primary and src.exists():
      dst.parent.mkdir(parents=True, exist_ok=True)
      os.replace(src, dst)
    logging.error("Checkpoint step %d is unusable (%s): moved it to %s.", step, why, dst)
    self._moves += 1
    distributed.barrier(f"attnlab_move_aside_{step}_{self._moves}", timeout_s=600)
    self.manager.reload()
    return dst

  def restore_newest(self, abstract_state: Any, data_iter: grain.DatasetIterator | None
                     ) -> Restored | None:
    """Restore the newest step that verifies (see the module docstring); None if there is
    no checkpoint. Damaged steps are moved aside on the way; if that leaves none,
    :class:`NoUsableCheckpointError`. A model mismatch raises :class:`WorkdirError` (the
    checkpoint is fine: the config is wrong) and moves nothing."""
    from attnlab.train import distributed  # pylint: disable=g-import-not-at-top
    moved = []
    self.manager.reload()
    steps = sorted(self.all_steps(), reverse=True)
    # Every process has listed the steps before process 0 moves any of them aside.
    distributed.barrier("attnlab_restore_listed", timeout_s=600)
    for step in steps:
      d = self.step_dir(step)
      try:
        problem = verify_checksums(d)
        verified = True
      except FileNotFoundError:
        problem, verified = None, False
        logging.warning("Checkpoint step %d has no checksum file (written before attnlab "
                        "recorded checksums, or killed before it was written): restoring it "
                        "unverified.", step)
      if problem is None:
        logging.info("Restoring checkpoint %s", d)
        try:
          state, window = self._restore(step, abstract_state, data_iter)
        except WorkdirError:
          raise
        except Exception as e:  # pylint: disable=broad-except  (any damage orbax trips on)
          problem = f"restoring it failed: {_one_line(e)}"
      if problem is not None:
        self.move_aside(step, problem)
        moved.append(step)
        continue
      return Restored(step, state, window, verified, moved)
    if moved:
      raise NoUsableCheckpointError(
          f"no usable checkpoint left in {self.directory}: step(s) "
          f"{', '.join(map(str, moved))} were damaged and moved to "
          f"{self.directory / CORRUPT_DIR}; to start over from step 0 pass "
          "--config.restart_from_scratch=True")
    return None

  def restore_latest(self, abstract_state: Any, data_iter: grain.DatasetIterator | None
                     ) -> tuple[int | None, Any]:
    """``(step, state)`` of :meth:`restore_newest`, ``(None, None)`` without checkpoints."""
    r = self.restore_newest(abstract_state, data_iter)
    return (None, None) if r is None else (r.step, r.state)

  def wait(self) -> None:
    """Wait for pending saves and write their checksums."""
    self.manager.wait_until_finished()
    self._finalize_pending(block=False)

  def close(self) -> None:
    """Wait for pending saves and release the manager (a second call does nothing)."""
    if self._closed:
      return
    self._closed = True
    self.wait()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of jax arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
