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
file, then ``os.replace``), in a background thread (joined before the next save, a restore,
:meth:`Checkpointer.wait` and :meth:`Checkpointer.close`), so that hashing never stalls the
training loop and with it the other processes' next collective.

:meth:`Checkpointer.restore_newest` tries the steps newest first. Process 0 verifies a step
(and only process 0 reads it for that) and tells the others its verdict; every process then
restores it, and all of them share whether that worked before anything is moved:

- files that do not match their checksums: the step is moved to
  ``checkpoints/corrupt/<step>`` (never deleted) with one log line, and the next older step
  is tried;
- the files verified but restoring failed on some process (out of memory, a permission or
  I/O error, a time-out, a version skew): :class:`CheckpointRestoreError` (one line), nothing
  is moved — the checkpoint is good, the cause is elsewhere;
- a step without a checksum file (written by an attnlab before checksums, or killed between
  orbax's commit and the checksum write) is restored unverified, with a warning; it is moved
  aside only if restoring fails with an error that looks like damage (orbax / tensorstore
  failing to find, read or parse a file; a missing file; bad JSON), any other error is a
  :class:`CheckpointRestoreError`; a non-finite loss before the next checkpoint also moves it
  aside (see the trainer).

Verifying reads the whole step once (sha256: ~450 MB/s on one busy core of the 2-core CI
machine), and so does writing the checksums after a save.

Arguments of a save are copied when they are mutable Python objects (the metrics window):
with asynchronous saving orbax serialises them after :meth:`Checkpointer.save` returns, while
the loop goes on. The train state's arrays are copied to host memory inside ``save``, and
the data iterator's state is captured there too (see ``data.iterator_checkpoint_args``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import threading
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
# Numbers the Checkpointers of a process: every process of a job makes them in the same order,
# so ``(instance, call, step)`` names the same rendezvous (barrier, key) on all of them, and
# a second run in the same job does not reuse the first one's keys.
_INSTANCES = itertools.count()


class WorkdirError(ValueError):
  """The workdir cannot be used for this config: not a directory, or its checkpoints were
  written by a different model. The message is one line."""


class NoUsableCheckpointError(WorkdirError):
  """Every checkpoint of the workdir was damaged (and moved aside); one-line message."""


class CheckpointRestoreError(RuntimeError):
  """Restoring a checkpoint failed for a reason other than damage to its files (they verified,
  or the error does not look like damage): nothing was moved aside; one-line message."""


# Fragments of orbax / tensorstore / JSON error messages that mean a file of the checkpoint is
# missing, truncated or unparsable (tensorstore's absl status codes and its own wording).
_DAMAGE_MARKERS = ("NOT_FOUND", "OUT_OF_RANGE", "DATA_LOSS", "Error reading", "Error opening",
                   "Error decoding", "Failed to decode", "Failed to parse", "not valid for value",
                   "Expecting value", "Unterminated string", "Extra data",
                   "No such file or directory", "does not exist", "Invalid checkpoint")
# Errors that are never damage, whatever their message says.
_NOT_DAMAGE = (MemoryError, PermissionError, TimeoutError, InterruptedError, ConnectionError,
               ImportError, AttributeError, NotImplementedError)


def _causes(e: BaseException) -> list[BaseException]:
  out, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    out.append(e)
    e = e.__cause__ or e.__context__
  return out


def looks_like_damage(e: BaseException) -> bool:
  """Whether an error of restoring a checkpoint means that its files are damaged (a missing
  file or key, an unreadable / unparsable one) rather than a problem elsewhere (memory,
  permissions, I/O, a time-out, versions). The error and its causes are looked at."""
  chain = _causes(e)
  if any(isinstance(c, _NOT_DAMAGE) for c in chain):
    return False
  for c in chain:
    if isinstance(c, (FileNotFoundError, json.JSONDecodeError, KeyError)):
      return True
    if isinstance(c, OSError):  # EIO, EACCES, ENOSPC...: the file system, not the files
      return False
    text = str(c)
    if any(m in text for m in _DAMAGE_MARKERS):
      if "DEADLINE_EXCEEDED" in text or "RESOURCE_EXHAUSTED" in text:
        return False
      return True
  return False


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
    self._hasher: threading.Thread | None = None  # writing checksums (process 0)
    self._hash_errors: list[str] = []
    self._closed = False
    self._moves = 0
    self._restores = 0
    self._id = next(_INSTANCES)

  def latest_step(self) -> int | None:
    """The newest step orbax lists (saved or being finalised); None without checkpoints."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every step orbax lists, ascending (steps moved to ``corrupt/`` are not listed)."""
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> Path:
    """``checkpoints/<step>``: where step `step` is (or would be) saved."""
    return self.directory / str(step)

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator,
           config_json: str | None = None,
           window: list[dict[str, float]] | None = None) -> None:
    """Save `step` (in the background if async); its checksums follow once orbax has
    finalised it (:meth:`poll`, :meth:`wait`, the next save or :meth:`close`)."""
    self._finalize_pending(block=True)  # orbax waits for the previous save anyway
    self._join_hasher()  # max_to_keep may delete a step it is reading
    items = dict(state=ocp.args.StandardSave(state),
                 data_iter=data_lib.iterator_checkpoint_args(data_iter))
    if config_json is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config_json))  # a fresh object
    if window is not None:  # a copy: the caller keeps appending while orbax serialises
      items[WINDOW_ITEM] = ocp.args.JsonSave({"records": [dict(r) for r in window]})
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._pending.append(step)
    if not self.manager.is_saving_in_progress():
      self._finalize_pending(block=True)

  def poll(self) -> None:
    """Start writing the checksums of saves that have finished, in a background thread
    (cheap; call once per step)."""
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
    self._join_hasher()
    dirs = [self.step_dir(s) for s in steps]
    self._hasher = threading.Thread(target=self._write_checksums, args=(dirs,),
                                    name="attnlab_checksums", daemon=True)
    self._hasher.start()

  def _write_checksums(self, dirs: list[Path]) -> None:
    for d in dirs:
      try:
        if d.is_dir():  # not already removed by max_to_keep
          write_checksums(d)
      except Exception as e:  # pylint: disable=broad-except  (reported when joined)
        self._hash_errors.append(f"{d}: {_one_line(e)}")

  def _join_hasher(self) -> None:
    """Wait for the checksum thread; log what it could not write (the step stays usable,
    unverified)."""
    if self._hasher is not None:
      self._hasher.join()
      self._hasher = None
    errors, self._hash_errors = self._hash_errors, []
    for text in errors:
      logging.warning("Could not write the checksums of %s; it will be restored unverified.",
                      text)

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
    """Move checkpoint `step` to ``checkpoints/corrupt/<step>`` (a suffix if that exists),
    log one line, and forget it. Every process must call this: they meet at a barrier first
    (nobody still reads the step), process 0 picks the destination, tells the others and
    moves the folder, and they meet again before listing the steps anew."""
    from attnlab.train import distributed  # pylint: disable=g-import-not-at-top
    self._join_hasher()
    self._moves += 1
    tag = f"{self._id}_{self._moves}_{step}"
    distributed.barrier(f"attnlab_before_move_{tag}", timeout_s=600)
    src = self.step_dir(step)
    dst = None
    if self._primary:
      dst = self.directory / CORRUPT_DIR / str(step)
      n = 0
      while dst.exists():
        n += 1
        dst = self.directory / CORRUPT_DIR / f"{step}.{n}"
      if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    dst = Path(distributed.broadcast_text(f"attnlab_move_dst_{tag}",
                                          None if dst is None else str(dst)))
    logging.error("Checkpoint step %d is unusable (%s): moved it to %s.", step, why, dst)
    distributed.barrier(f"attnlab_after_move_{tag}", timeout_s=600)
    self.manager.reload()
    return dst

  def restore_newest(self, abstract_state: Any, data_iter: grain.DatasetIterator | None
                     ) -> Restored | None:
    """Restore the newest step that verifies (see the module docstring); None if there is
    no checkpoint. Damaged steps are moved aside on the way; if that leaves none,
    :class:`NoUsableCheckpointError`. A model mismatch raises :class:`WorkdirError` (the
    checkpoint is fine: the config is wrong), a failure that is not damage
    :class:`CheckpointRestoreError`; both move nothing. Every process must call this; they
    act on process 0's verdict and on everyone's restore outcome, so they all agree."""
    from attnlab.train import distributed  # pylint: disable=g-import-not-at-top
    self._join_hasher()
    moved = []
    self._restores += 1
    call = f"{self._id}_{self._restores}"
    self.manager.reload()
    listed = json.dumps(self.all_steps()) if self._primary else None
    steps = sorted(json.loads(distributed.broadcast_text(f"attnlab_steps_{call}", listed)),
                   reverse=True)
    for step in steps:
      d = self.step_dir(step)
      tag = f"{call}_{step}"
      verdict = None
      if self._primary:  # only process 0 reads the files to verify them
        try:
          problem = verify_checksums(d)
          verdict = "ok" if problem is None else f"bad:{problem}"
        except FileNotFoundError:
          verdict = "unverified"
      verdict = distributed.broadcast_text(f"attnlab_verdict_{tag}", verdict)
      if verdict.startswith("bad:"):
        self.move_aside(step, verdict[4:])
        moved.append(step)
        continue
      verified = verdict == "ok"
      if not verified:
        logging.warning("Checkpoint step %d has no checksum file (written before attnlab "
                        "recorded checksums, or killed before it was written): restoring it "
                        "unverified.", step)
      logging.info("Restoring checkpoint %s", d)
      state = window = None
      try:
        state, window = self._restore(step, abstract_state, data_iter)
        outcome = "ok"
      except WorkdirError as e:
        outcome = f"workdir:{e}"
      except Exception as e:  # pylint: disable=broad-except  (judged below, on all processes)
        outcome = f"{'damage' if looks_like_damage(e) else 'fatal'}:{_one_line(e)}"
      outcomes = distributed.gather_text(f"attnlab_restored_{tag}", outcome)
      failed = [(i, o) for i, o in enumerate(outcomes) if o != "ok"]
      if not failed:
        return Restored(step, state, window, verified, moved)
      for i, o in failed:
        if o.startswith("workdir:"):
          raise WorkdirError(o[len("workdir:"):])
      # Verified files are not the cause of any failure; unverified ones are moved aside
      # only if every failure looks like damage.
      fatal = [(i, o) for i, o in failed if verified or o.startswith("fatal:")]
      first, text = (fatal or failed)[0]
      where = f" on process {first}" if len(outcomes) > 1 else ""
      why = text.split(":", 1)[1]
      if fatal:
        state_of = ("its files match their checksums" if verified else
                    "it has no checksums and the error does not look like damage")
        raise CheckpointRestoreError(
            f"restoring checkpoint {d} failed{where} ({state_of}, so it was not moved "
            f"aside): {why}; fix the cause (memory, permissions, the file system, package "
            "versions) and rerun")
      self.move_aside(step, f"restoring it failed{where}: {why}")
      moved.append(step)
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
    """Wait for pending saves and for their checksums to be written."""
    self.manager.wait_until_finished()
    self._finalize_pending(block=False)
    self._join_hasher()

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
