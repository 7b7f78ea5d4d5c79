"""Fault tolerance, second pass (review of issue 8's fix): async saves snapshot their
arguments, restore errors that are not damage move nothing, processes act on one verdict,
checksums are hashed off the training thread, signals in multi-process / library use, the
local launcher's signal handling, user-error plumbing. Fast: tiny states, no subprocess
training runs (the two subprocesses run tiny scripts).
"""

import asyncio
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from attnlab.train import checkpointing, distributed, trainer

REPO = Path(__file__).resolve().parents[2]

# As in test_faults.py (the same compiled programs): checkpoints at 3, 6, 9; stopped at 9.
KW = dict(total_steps=12, log_every=4, checkpoint_every=3, keep_checkpoints=4, eval_every=6,
          model__dropout=0.1)
STOP = 9
_CACHE: dict[str, Path] = {}


@pytest.fixture
def stopped(make_config, tmp_path_factory, tmp_path):
  """A fresh copy of a workdir stopped at step STOP (checkpoints 3, 6, 9)."""
  if "stopped" not in _CACHE:
    path = tmp_path_factory.mktemp("review_stopped")
    trainer.train_and_evaluate(make_config(stop_at_step=STOP, **KW), str(path))
    _CACHE["stopped"] = path
  dst = tmp_path / "w"
  shutil.copytree(_CACHE["stopped"], dst)
  return dst


def _steps(workdir) -> list[int]:
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def _tiny_save_args(make_config):
  """A small state pytree and a real train data iterator."""
  state = {"step": jnp.asarray(1), "w": jnp.arange(8.0)}
  return state, trainer.make_train_iterator(make_config())


# --- 1. async saves do not alias the caller's metrics window. ---

def test_async_save_snapshots_the_metrics_window(make_config, tmp_path, monkeypatch):
  # Orbax writes JSON items in a background thread; hold that write until the loop has gone
  # on (as on a slow file system), so that an aliased window would show the later steps.
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
  release = threading.Event()
  real_save_fn = jch.JsonCheckpointHandler._save_fn

  async def late_save_fn(self, x, directory):
    await asyncio.to_thread(release.wait, 30)
    return await real_save_fn(self, x, directory)

  monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", late_save_fn)
  state, it = _tiny_save_args(make_config)
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=True)
  try:
    window = [{"train/loss": 1.0}]
    ckpt.save(1, state, it, window=window)
    assert not release.is_set()
    # The loop goes on at once: the next steps' records, and a record changed in place.
    for i in range(50):
      window.append({"train/loss": 2.0 + i})
    window[0]["train/loss"] = -1.0
    release.set()
    ckpt.wait()
    saved = json.loads((tmp_path / "checkpoints" / "1" / checkpointing.WINDOW_ITEM /
                        "metadata").read_text())
    assert saved == {"records": [{"train/loss": 1.0}]}
    assert checkpointing.verify_checksums(tmp_path / "checkpoints" / "1") is None
  finally:
    release.set()
    ckpt.close()


# --- 6. checksums are written off the training thread. ---

def test_checksums_are_hashed_in_a_background_thread(make_config, tmp_path, monkeypatch):
  state, it = _tiny_save_args(make_config)
  release, started = threading.Event(), threading.Event()
  threads = []
  real = checkpointing.write_checksums

  def slow_write(step_dir):
    threads.append(threading.current_thread())
    started.set()
    assert release.wait(60), "never released"
    return real(step_dir)

  monkeypatch.setattr(checkpointing, "write_checksums", slow_write)
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False)
  try:
    ckpt.save(1, state, it)  # finalised at once (sync): the hashing starts
    ckpt.poll()
    # save() and poll() returned while the hash is still blocked, on another thread.
    assert started.wait(30) and threads[0] is not threading.main_thread()
    assert not (tmp_path / "checkpoints" / "1" / checkpointing.CHECKSUM_FILE).exists()
    release.set()
    ckpt.wait()  # joins it
    assert checkpointing.verify_checksums(tmp_path / "checkpoints" / "1") is None
  finally:
    release.set()
    ckpt.close()


# --- 2. restore errors: only damage of an unverified step moves it aside. ---

@pytest.mark.parametrize("error", [
    MemoryError("out of memory"), OSError(errno.EIO, "Input/output error"),
    PermissionError(errno.EACCES, "Permission denied"),
    ValueError("DEADLINE_EXCEEDED: Barrier timed out"),
    FileNotFoundError("even this: the files verified, so they are not the cause")],
    ids=["oom", "eio", "eacces", "barrier_timeout", "verified_but_file_not_found"])
def test_a_verified_step_that_fails_to_restore_is_not_moved(error, make_config, stopped,
                                                            monkeypatch):
  metrics_before = (stopped / "metrics.jsonl").read_text()

  def failing_restore(self, step, abstract_state, data_iter):
    raise error

  monkeypatch.setattr(checkpointing.Checkpointer, "_restore", failing_restore)
  # restart_from_scratch does not apply: the checkpoint is good (and metrics are kept).
  with pytest.raises(checkpointing.CheckpointRestoreError) as e:
    trainer.train_and_evaluate(make_config(restart_from_scratch=True, **KW), str(stopped))
  msg = str(e.value)
  assert "\n" not in msg and f"checkpoints/{STOP} failed" in msg, msg
  assert "its files match their checksums, so it was not moved aside" in msg, msg
  assert type(error).__name__ in msg, msg
  assert not (stopped / "checkpoints" / "corrupt").exists()
  assert _steps(stopped) == [3, 6, STOP]
  assert (stopped / "metrics.jsonl").read_text() == metrics_before


def test_an_unverified_step_is_moved_only_for_damage(make_config, stopped, monkeypatch):
  (stopped / "checkpoints" / str(STOP) / checkpointing.CHECKSUM_FILE).unlink()

  def failing_restore(self, step, abstract_state, data_iter):
    raise PermissionError(errno.EACCES, "Permission denied", "state/manifest.ocdbt")

  monkeypatch.setattr(checkpointing.Checkpointer, "_restore", failing_restore)
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match="it has no checksums and the error does not look like damage"):
    trainer.train_and_evaluate(make_config(**KW), str(stopped))
  assert not (stopped / "checkpoints" / "corrupt").exists()
  assert _steps(stopped) == [3, 6, STOP]


def _error_with_cause(outer: Exception, cause: Exception) -> Exception:
  try:
    try:
      raise cause
    except Exception as c:  # pylint: disable=broad-except
      raise outer from c
  except Exception as e:  # pylint: disable=broad-except
    return e


@pytest.mark.parametrize("error,damage", [
    # What the damaged checkpoints of test_faults.py raise (unverified), verbatim in part.
    (ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at "p/.zarray" does not '
                "exist"), True),
    (ValueError("OUT_OF_RANGE: Requested byte range [53744, 84479) is not valid for value of "
                "size 1000"), True),
    (_error_with_cause(Exception("Encountered error while reading array index"),
                       ValueError("OUT_OF_RANGE: Error reading local file")), True),
    (json.JSONDecodeError("Expecting value", "", 0), True),
    (KeyError('Item "state" was not found in the checkpoint.'), True),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), True),
    (ValueError("File d/process_0-of-1.json does not exist."), True),
    # Not damage: the machine, the file system, the cluster, the code.
    (MemoryError(), False),
    (OSError(errno.EIO, "Input/output error"), False),
    (PermissionError(errno.EACCES, "Permission denied"), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (ValueError("DEADLINE_EXCEEDED: Barrier timed out. Id: x"), False),
    (ValueError("RESOURCE_EXHAUSTED: Out of memory while reading array"), False),
    (_error_with_cause(ValueError("Error reading array"), MemoryError()), False),
    (AttributeError("module 'orbax' has no attribute 'x'"), False),
    (TypeError("unexpected keyword argument"), False),
])
def test_looks_like_damage(error, damage):
  assert checkpointing.looks_like_damage(error) is damage


# --- 3. several processes: one verdict, a shared outcome, then (maybe) a move. ---

def _restore_newest(make_config, workdir, primary=True):
  config = make_config(**KW)
  setup = trainer.Setup(config)
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt._primary = primary  # pylint: disable=protected-access
  try:
    return ckpt.restore_newest(setup.abstract_state, trainer.make_train_iterator(config))
  finally:
    ckpt.close()


def _fake_peer(monkeypatch, outcome_of_step):
  """Process 1's restore outcome for each step, as gather_text would return it."""
  names = []

  def gather(name, text, timeout_s=600):
    names.append(name)
    step = int(name.rsplit("_", 1)[1])
    return [text, outcome_of_step(step)]

  monkeypatch.setattr(distributed, "gather_text", gather)
  return names


def test_damage_seen_by_another_process_moves_the_step_on_every_process(
    make_config, stopped, monkeypatch, caplog):
  (stopped / "checkpoints" / str(STOP) / checkpointing.CHECKSUM_FILE).unlink()
  names = _fake_peer(monkeypatch, lambda step: "damage:ValueError: NOT_FOUND: gone"
                     if step == STOP else "ok")
  caplog.set_level(logging.INFO)
  r = _restore_newest(make_config, stopped)
  assert r.step == 6 and r.moved == [STOP]
  assert [n.rsplit("_", 1)[1] for n in names] == [str(STOP), "6"]  # after each attempt
  errors = [m.getMessage() for m in caplog.records if m.levelno >= logging.ERROR]
  assert len(errors) == 1 and "restoring it failed on process 1: ValueError: NOT_FOUND" in (
      errors[0]), errors
  assert (stopped / "checkpoints" / "corrupt" / str(STOP) / "state").is_dir()


def test_a_fatal_error_on_another_process_moves_nothing(make_config, stopped, monkeypatch):
  _fake_peer(monkeypatch, lambda step: "fatal:MemoryError: out of memory")
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"failed on process 1 \(its files match their checksums.*"
                     "MemoryError: out of memory"):
    _restore_newest(make_config, stopped)
  assert not (stopped / "checkpoints" / "corrupt").exists()
  assert _steps(stopped) == [3, 6, STOP]


def test_other_processes_follow_process_0s_verdict_without_reading(make_config, stopped,
                                                                    monkeypatch):
  # As process 1: it does not hash the step (process 0 may move it meanwhile) and takes
  # process 0's verdict, list of steps and destination.
  def no_hashing(step_dir):
    raise AssertionError("only process 0 verifies")

  monkeypatch.setattr(checkpointing, "verify_checksums", no_hashing)
  broadcasts = {}

  def broadcast(name, text, timeout_s=600):
    assert text is None, (name, text)  # process 1 contributes nothing
    if name.startswith("attnlab_steps_"):
      out = json.dumps([3, 6, STOP])
    elif name.startswith("attnlab_verdict_"):
      out = "bad:state/d/x does not match its sha256" if name.endswith(f"_{STOP}") else "ok"
    else:
      out = "/elsewhere/corrupt/9"
    broadcasts[name] = out
    return out

  monkeypatch.setattr(distributed, "broadcast_text", broadcast)
  r = _restore_newest(make_config, stopped, primary=False)
  assert r.step == 6 and r.moved == [STOP] and r.verified
  assert any(n.startswith("attnlab_move_dst_") for n in broadcasts)
  # Process 1 moved nothing itself (process 0 does, to the destination it broadcast).
  assert (stopped / "checkpoints" / str(STOP)).is_dir()


# --- 5, 8, 9: signals. ---

def test_stop_handler_stays_installed_while_the_last_save_finishes(make_config, tmp_path,
                                                                    monkeypatch):
  seen = []
  real_close = checkpointing.Checkpointer.close

  def close(self):
    seen.append(signal.getsignal(signal.SIGINT))
    return real_close(self)

  monkeypatch.setattr(checkpointing.Checkpointer, "close", close)
  trainer.train_and_evaluate(make_config(total_steps=2), str(tmp_path))
  handler = seen[0]
  assert isinstance(getattr(handler, "__self__", None), trainer._StopSignal), handler
  assert signal.getsignal(signal.SIGINT) is not handler  # removed afterwards


def test_second_sigint_in_library_use_raises_keyboard_interrupt():
  assert trainer.EXIT_ON_SECOND_INTERRUPT is False  # set by the command line only
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt):
    with trainer._StopSignal() as s:
      os.kill(os.getpid(), signal.SIGINT)
      assert s.requested and s.reason == "SIGINT (Ctrl-C)"
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(100):  # the handler runs at the next bytecode
        pass
  assert signal.getsignal(signal.SIGINT) is before


def test_multi_process_without_preemption_service_does_not_stop_alone(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed, "preemption_service_active", lambda: False)
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with trainer._StopSignal() as s:
    # No handler of its own: a signal keeps its default action (the process ends).
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    s.reason = "SIGTERM"  # even if one were recorded, this process must not stop alone
    assert not s.requested
  monkeypatch.setattr(distributed, "preemption_service_active", lambda: True)
  with trainer._StopSignal() as s:
    assert getattr(signal.getsignal(signal.SIGINT), "__self__", None) is s
    assert signal.getsignal(signal.SIGTERM) == before[1]  # JAX's notifier owns SIGTERM
    s.reason = "SIGINT (Ctrl-C)"
    assert not s.requested  # the preemption sync point decides


# --- 10, 11, 13: user-error plumbing. ---

def test_a_type_error_opening_the_data_is_a_bug_not_a_data_error(make_config, tmp_path,
                                                                 monkeypatch):
  def buggy(config):
    raise TypeError("make_dataset() got an unexpected keyword argument 'x'")

  monkeypatch.setattr(trainer, "make_train_iterator", buggy)
  with pytest.raises(TypeError, match="unexpected keyword"):
    trainer.train_and_evaluate(make_config(total_steps=2), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_only_the_creating_process_removes_a_workdir_and_only_if_empty(tmp_path):
  path, created = trainer._make_workdir(tmp_path / "run")
  assert created and path.is_dir()
  assert trainer._make_workdir(tmp_path / "run") == (path, False)  # "another process"
  (path / "checkpoints").mkdir()
  trainer._remove_new_workdir(path)  # as good as empty: removed
  assert not path.exists()
  path, _ = trainer._make_workdir(tmp_path / "run")
  (path / "checkpoints").mkdir()
  (path / "checkpoints" / "3").mkdir()  # written by another process meanwhile: kept
  (path / "metrics.jsonl").write_text("")
  trainer._remove_new_workdir(path)
  assert (path / "checkpoints" / "3").is_dir() and (path / "metrics.jsonl").is_file()


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf"])
def test_bad_startup_barrier_timeout_is_one_line_and_lazy(value, monkeypatch):
  monkeypatch.setenv(distributed.STARTUP_BARRIER_ENV, value)
  with pytest.raises(distributed.DistributedSetupError) as e:
    distributed.startup_barrier_timeout_s()
  assert str(e.value).startswith(f"ATTNLAB_STARTUP_BARRIER_TIMEOUT_S={value!r} is not a "
                                 "positive number of seconds"), str(e.value)
  monkeypatch.setenv(distributed.STARTUP_BARRIER_ENV, "12.5")
  assert distributed.startup_barrier_timeout_s() == 12.5
  monkeypatch.delenv(distributed.STARTUP_BARRIER_ENV)
  assert distributed.startup_barrier_timeout_s() == distributed.STARTUP_BARRIER_TIMEOUT_S


def test_bad_startup_barrier_timeout_on_the_command_line(tmp_path, subprocess_env):
  env = dict(subprocess_env, ATTNLAB_STARTUP_BARRIER_TIMEOUT_S="soon")
  r = subprocess.run(
      [sys.executable, "-m", "attnlab.train", "--config", "configs/mqar.py:local",
       "--workdir", str(tmp_path / "run"), "--coordinator_address=127.0.0.1:1",
       "--num_processes=2", "--process_id=0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert errors == ["error: ATTNLAB_STARTUP_BARRIER_TIMEOUT_S='soon' is not a positive number "
                    "of seconds (unset it for the default 3600)"], r.stderr[-3000:]


# --- 4, 14, 16: the local launcher. ---

_LAUNCHER_SCRIPT = r'''
import io, os, signal, sys, threading, time
from attnlab.train import launch_local

class Sink(io.StringIO):
  """The first write from the main thread (launch_local's say(), under its lock) receives a
  SIGTERM: a handler that took the lock again would deadlock here."""
  fired = False
  def write(self, text):
    out = super().write(text)
    if threading.current_thread() is threading.main_thread() and not Sink.fired:
      Sink.fired = True
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.2)  # the handler runs now, inside this write
    return out

sink = Sink()
def hang_up():
  while sink.getvalue().count("ready") < 2:
    time.sleep(0.05)
  os.kill(os.getpid(), signal.SIGHUP)  # the terminal went away
threading.Thread(target=hang_up, daemon=True).start()
code = launch_local.launch([], num_processes=2, module="sig_worker", sink=sink, timeout=60)
sys.stdout.write(sink.getvalue())
print(f"exit {code}")
'''

_WORKER = r'''
import signal, sys, time
got = []
def handle(signum, frame):
  got.append(signal.Signals(signum).name)
  print(f"got {got[-1]}", flush=True)
signal.signal(signal.SIGHUP, handle)
signal.signal(signal.SIGTERM, handle)
print("ready", flush=True)
deadline = time.time() + 50
while time.time() < deadline and len(got) < 2:
  time.sleep(0.05)
sys.exit(0 if got else 9)
'''


def test_launcher_forwards_sighup_and_its_handler_takes_no_lock(tmp_path):
  (tmp_path / "sig_worker.py").write_text(_WORKER)
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
  r = subprocess.run([sys.executable, "-c", _LAUNCHER_SCRIPT], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=90)
  assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
  out = r.stdout
  assert out.rstrip().endswith("exit 0"), out
  assert "received SIGHUP; passing it on to the 2 processes" in out, out
  assert "received SIGTERM; passing it on to the 2 processes" in out, out
  for i in (0, 1):
    assert f"[{i}] got SIGHUP" in out and f"[{i}] got SIGTERM" in out, out


def test_launcher_refuses_zero_processes_in_one_line():
  r = subprocess.run([sys.executable, "-m", "attnlab.train.launch_local", "--num_processes",
                      "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 2
  assert r.stdout == "" and r.stderr.splitlines() == [
      "launch_local: error: --num_processes must be >= 1, got 0"], r.stderr



@pytest.mark.slow
def test_two_processes_agree_on_a_damaged_checkpoint(tmp_path, subprocess_env):
  # End to end through the coordination service: process 0 verifies, both restore, both
  # move on to the older step; process 1 never hashes (and nothing hangs).
  cmd = [sys.executable, "-m", "attnlab.train.launch_local", "--num_processes", "2",
         "--timeout", "300", "--", "--config", "configs/mqar.py:local", "--workdir",
         str(tmp_path / "w"), "--config.log_every=2", "--config.checkpoint_every=2",
         "--config.eval_every=0", "--config.async_checkpointing=False"]
  r = subprocess.run(cmd + ["--config.total_steps=6", "--config.stop_at_step=4"], cwd=REPO,
                     env=subprocess_env, capture_output=True, text=True, timeout=360)
  assert r.returncode == 0, r.stdout[-3000:]
  ckpts = tmp_path / "w" / "checkpoints"
  data = max((p for p in (ckpts / "4" / "state").rglob("*") if p.is_file()
              and p.parent.name == "d"), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  data.write_bytes(bytes(raw))
  r = subprocess.run(cmd + ["--config.total_steps=6"], cwd=REPO, env=subprocess_env,
                     capture_output=True, text=True, timeout=360)
  assert r.returncode == 0, r.stdout[-3000:]
  for i in (0, 1):
    assert f"[{i}] " in r.stdout and any(
        line.startswith(f"[{i}] ") and "Resumed from step 2 (the newest usable checkpoint)"
        in line for line in r.stdout.splitlines()), r.stdout[-3000:]
    assert any(line.startswith(f"[{i}] ") and "Checkpoint step 4 is unusable" in line
               and f"moved it to {ckpts / 'corrupt' / '4'}" in line
               for line in r.stdout.splitlines()), r.stdout[-3000:]
  assert (ckpts / "corrupt" / "4" / "state").is_dir()
  assert _steps(tmp_path / "w")[-1] == 6  # the resumed run saved again
