"""Fault injection: damaged checkpoints, signals, kill -9, NaN, a dying process, bad data.

Every test checks what is left on disk and that the resumed run's metrics equal those of an
uninterrupted run of the same config (the reference, computed in this process; metrics of
every logged step, perf/* timings aside). In-process runs share one model and schedule (KW),
so they compile once (and hit the persistent compilation cache of conftest.py).
Subprocess cases (signals, kill -9, two processes) are slower: SIGINT and the launcher's
report run by default, the others are marked slow.
"""

import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attnlab.train import checkpointing, launch_local, trainer
from attnlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]

# Checkpoints at 3, 6, 9, 12; logged steps 4, 8, 12; evals at 0, 6, 12; dropout on (the RNG
# streams must resume too). STOP is not a logged step: the metrics window crosses the restart.
KW = dict(total_steps=12, log_every=4, checkpoint_every=3, keep_checkpoints=4, eval_every=6,
          model__dropout=0.1)
STOP = 9
_CACHE: dict[str, Path] = {}


def _records(workdir) -> dict[int, dict]:
  """Every non-perf metric of every record, by step."""
  out = {}
  for r in read_metrics(workdir):
    out.setdefault(r["step"], {}).update(
        {k: v for k, v in r.items() if k != "step" and not k.startswith("perf/")})
  return out


def _run_once(name: str, make_config, tmp_path_factory, **overrides) -> Path:
  """A workdir of one run of KW + overrides, made once per test session."""
  if name not in _CACHE:
    path = tmp_path_factory.mktemp(name)
    trainer.train_and_evaluate(make_config(**dict(KW, **overrides)), str(path))
    _CACHE[name] = path
  return _CACHE[name]


@pytest.fixture
def reference(make_config, tmp_path_factory):
  """Metrics of the uninterrupted run."""
  return _records(_run_once("reference", make_config, tmp_path_factory))


@pytest.fixture
def stopped(make_config, tmp_path_factory, tmp_path):
  """A fresh copy of a workdir stopped at step STOP (checkpoints 3, 6, 9)."""
  src = _run_once("stopped", make_config, tmp_path_factory, stop_at_step=STOP)
  dst = tmp_path / "w"
  shutil.copytree(src, dst)
  return dst


def _steps(workdir) -> list[int]:
  """The steps a Checkpointer lists (closed again)."""
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def _largest_data_file(step_dir: Path) -> Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _flip_bytes(path: Path, n: int = 2000, seed: int = 0) -> None:
  data = bytearray(path.read_bytes())
  for i in random.Random(seed).sample(range(len(data)), min(n, len(data))):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def _damage(step_dir: Path, kind: str) -> None:
  if kind == "truncated_file":
    f = _largest_data_file(step_dir)
    os.truncate(f, f.stat().st_size // 2)
  elif kind == "deleted_manifests":
    for f in step_dir.rglob("manifest.ocdbt"):
      f.unlink()
  elif kind == "deleted_data_iterator_json":
    (step_dir / "data_iter" / "process_0-of-1.json").unlink()
  elif kind == "empty_metadata":
    (step_dir / "state" / "_METADATA").write_text("")
  elif kind == "deleted_state":
    shutil.rmtree(step_dir / "state")
  elif kind == "flipped_bytes":
    f = _largest_data_file(step_dir)
    size = f.stat().st_size
    assert size >= 2000, size
    _flip_bytes(f)
    assert f.stat().st_size == size  # silent corruption: the size is unchanged
  else:
    raise ValueError(kind)


def _errors(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


_slow = pytest.mark.slow  # the same path as the unmarked kinds; kept out of the fast run
DAMAGE = ["truncated_file", pytest.param("deleted_manifests", marks=_slow),
          pytest.param("deleted_data_iterator_json", marks=_slow),
          pytest.param("empty_metadata", marks=_slow), "deleted_state", "flipped_bytes"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_checkpoint_falls_back(kind, make_config, stopped, reference, caplog):
  ckpts = stopped / "checkpoints"
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [3, 6, STOP]
  assert checkpointing.verify_checksums(ckpts / str(STOP)) is None
  _damage(ckpts / str(STOP), kind)
  assert checkpointing.verify_checksums(ckpts / str(STOP)) is not None
  caplog.set_level(logging.INFO)
  result = trainer.train_and_evaluate(make_config(**KW), str(stopped))
  assert result["status"] == "done" and result["step"] == 12
  # One clear line naming the step, what is wrong and where it went; nothing deleted.
  errors = _errors(caplog)
  assert len(errors) == 1, errors
  assert errors[0].startswith(f"Checkpoint step {STOP} is unusable (")
  assert f"moved it to {ckpts / 'corrupt' / str(STOP)}" in errors[0]
  assert "\n" not in errors[0]
  assert any(r.getMessage() == "Resumed from step 6 (the newest usable checkpoint)"
             for r in caplog.records)
  # The whole step folder went to corrupt/<step>, with its checksum file and whatever
  # damaged content it had.
  moved = ckpts / "corrupt" / str(STOP)
  assert moved.is_dir() and (moved / checkpointing.CHECKSUM_FILE).is_file()
  assert checkpointing.verify_checksums(moved) is not None
  assert (moved / "state").is_dir() is (kind != "deleted_state")
  assert _steps(stopped) == [3, 6, 9, 12]
  assert _records(stopped) == reference


def test_stop_between_logged_steps_resumes_with_the_same_windows(make_config, stopped,
                                                                 reference):
  # The stopped run wrote no record at STOP (not a logged step): its partial window is saved
  # with the checkpoint and the first logged average after the resume covers steps 9..12.
  assert max(_records(stopped)) == 8
  saved = json.loads((stopped / "checkpoints" / str(STOP) / "train_window" / "metadata")
                     .read_text())
  assert len(saved["records"]) == 1 and "train/loss" in saved["records"][0]  # step 9
  trainer.train_and_evaluate(make_config(**KW), str(stopped))
  got = _records(stopped)
  assert sorted(got) == [0, 4, 6, 8, 12]
  assert got == reference


# Not "deleted_manifests": without checksums, orbax's restore of such a step sometimes loses
# tensorstore's NOT_FOUND in a background task and returns (seen 1 run in 3); only the
# checksums catch it reliably (test_damaged_latest_checkpoint_falls_back).
@pytest.mark.parametrize("kind", [
    "deleted_data_iterator_json",
    # Without checksums a truncated data file was once restored without an error (seen 1 run
    # in 2 with the full suite): orbax need not read the truncated bytes. Checksums catch it.
    pytest.param("truncated_file", marks=[_slow, pytest.mark.xfail(
        strict=False, reason="orbax may restore a truncated file without reading the cut")]),
    pytest.param("empty_metadata", marks=_slow), pytest.param("deleted_state", marks=_slow)])
def test_checkpoints_without_checksums(kind, make_config, stopped, reference, caplog):
  # As written before checksums existed (or killed between orbax's commit and the checksum
  # write): restored unverified, with a warning; orbax's errors that mean damage (each kind
  # here) still move a step aside.
  for f in (stopped / "checkpoints").rglob(checkpointing.CHECKSUM_FILE):
    f.unlink()
  _damage(stopped / "checkpoints" / str(STOP), kind)
  caplog.set_level(logging.INFO)
  trainer.train_and_evaluate(make_config(**KW), str(stopped))
  errors = _errors(caplog)
  assert len(errors) == 1 and errors[0].startswith(f"Checkpoint step {STOP} is unusable "
                                                   "(restoring it failed: "), errors
  assert any("has no checksum file" in r.getMessage() for r in caplog.records)
  assert (stopped / "checkpoints" / "corrupt" / str(STOP)).is_dir()
  # The new saves have checksums again.
  assert checkpointing.verify_checksums(stopped / "checkpoints" / "12") is None
  assert _records(stopped) == reference


def test_no_usable_checkpoint_stops_unless_restart_from_scratch(make_config, stopped,
                                                                reference):
  for step in (3, 6, STOP):
    _damage(stopped / "checkpoints" / str(step), "flipped_bytes")
  with pytest.raises(checkpointing.NoUsableCheckpointError) as e:
    trainer.train_and_evaluate(make_config(**KW), str(stopped))
  msg = str(e.value)
  assert "\n" not in msg and "restart_from_scratch=True" in msg and "9, 6, 3" in msg, msg
  corrupt = stopped / "checkpoints" / "corrupt"
  assert sorted(p.name for p in corrupt.iterdir()) == ["3", "6", "9"]
  assert _steps(stopped) == []
  result = trainer.train_and_evaluate(make_config(restart_from_scratch=True, **KW),
                                      str(stopped))
  assert result["step"] == 12
  assert sorted(p.name for p in corrupt.iterdir()) == ["3", "6", "9"]  # kept
  assert _records(stopped) == reference
  # The first attempt's records were dropped, not doubled.
  steps = [(r["step"], "eval/loss" in r) for r in read_metrics(stopped)]
  assert len(steps) == len(set(steps)), steps


def test_nan_names_the_last_good_checkpoint_and_a_rerun_resumes_from_it(
    make_config, tmp_path, reference):
  with pytest.raises(trainer.NonFiniteError,
                     match=r"at step 11 .*the last good checkpoint is step 9 in \S+ \(a rerun "
                     r"resumes from it\)"):
    trainer.train_and_evaluate(make_config(debug_nan_at_step=11, **KW), str(tmp_path))
  assert _steps(tmp_path) == [3, 6, 9]
  last = read_metrics(tmp_path)[-1]
  assert last["step"] == 11 and last["train/loss"] is None
  assert set(last["non_finite"]) >= {"train/loss"}
  trainer.train_and_evaluate(make_config(**KW), str(tmp_path))
  assert _records(tmp_path) == reference


def test_nan_after_an_unverified_resume_moves_that_checkpoint_aside(make_config, stopped,
                                                                    reference):
  # Step 9 lost its checksums (as if killed right after orbax's commit). Resumed from it
  # unverified, the run hits a NaN before its next checkpoint: 9 may be the cause, so it is
  # moved aside, and the message names 6, which the rerun resumes from.
  (stopped / "checkpoints" / str(STOP) / checkpointing.CHECKSUM_FILE).unlink()
  with pytest.raises(trainer.NonFiniteError,
                     match=r"at step 10 .*the last good checkpoint is step 6 "):
    trainer.train_and_evaluate(make_config(debug_nan_at_step=10, **KW), str(stopped))
  assert (stopped / "checkpoints" / "corrupt" / str(STOP)).is_dir()
  assert _steps(stopped) == [3, 6]
  trainer.train_and_evaluate(make_config(**KW), str(stopped))
  assert _records(stopped) == reference


# --- Bad data paths: one line, no workdir left behind. ---

def _bytes_config(make_config, tmp_path, case):
  config = make_config("lm_bytes", total_steps=2)
  if case == "empty_folder":
    (tmp_path / "empty").mkdir()
    config.data.dir = str(tmp_path / "empty")
  elif case == "missing_path":
    config.data.files = (str(tmp_path / "nope.txt"),)
  elif case == "binary_files":
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.dat").write_bytes(b"\x00\x01\x02" * 1000)
    config.data.dir = str(tmp_path / "bin")
  elif case == "shorter_than_a_sequence":
    (tmp_path / "short").mkdir()
    for name in "abcdefgh":  # both splits get a file
      (tmp_path / "short" / f"{name}.txt").write_text("x = 1\n")
    config.data.dir = str(tmp_path / "short")
  return config


@pytest.mark.parametrize("case", ["empty_folder", "missing_path", "binary_files",
                                  "shorter_than_a_sequence"])
def test_bad_data_path_is_one_line_and_leaves_no_workdir(case, make_config, tmp_path):
  config = _bytes_config(make_config, tmp_path, case)
  with pytest.raises(trainer.DataError) as e:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert str(e.value).startswith("config.data: ") and "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_bad_data_path_on_the_command_line(tmp_path, subprocess_env):
  r = subprocess.run(
      [sys.executable, "-m", "attnlab.train", "--config", "configs/lm_bytes.py:local",
       "--workdir", str(tmp_path / "run"), f"--config.data.dir={tmp_path / 'missing'}"],
      cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "config.data:" in lines[0] and "missing" in lines[0], lines
  assert not (tmp_path / "run").exists()


# --- Signals and kill -9 (subprocesses). ---

_SIG_KW = dict(total_steps=400, log_every=10, checkpoint_every=0, eval_every=0,
               async_checkpointing=True)


def _cli_args(workdir, **kw) -> list[str]:
  args = [sys.executable, "-m", "attnlab.train", "--config", "configs/mqar.py:local",
          "--workdir", str(workdir)]
  return args + [f"--config.{k.replace('__', '.')}={v}" for k, v in kw.items()]


class _Run:
  """A training subprocess whose stderr is collected by a thread."""

  def __init__(self, args, env):
    self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    self.lines: list[str] = []
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def wait_for(self, needle: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not any(needle in line for line in self.lines):
      assert self.proc.poll() is None, "".join(self.lines[-30:])
      assert time.time() < deadline, f"no {needle!r} in time: " + "".join(self.lines[-30:])
      time.sleep(0.02)

  def finish(self, timeout: float = 120) -> int:
    code = self.proc.wait(timeout=timeout)
    self._thread.join(timeout=10)
    return code

  @property
  def text(self) -> str:
    return "".join(self.lines)


def _resume_and_compare(workdir, tmp_path, env, start: int, until: int, **kw) -> None:
  """Resume `workdir` (which must start at `start`) to step `until` and run an uninterrupted
  reference to `until`, both as subprocesses like the interrupted run (the in-process tests
  see 8 CPU devices, whose reductions round differently), at the same time; compare."""
  ref = tmp_path / "reference"
  runs = [subprocess.Popen(_cli_args(w, stop_at_step=until, **kw), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
          for w in (workdir, ref)]
  outs = [r.communicate(timeout=300)[1] for r in runs]
  for r, err in zip(runs, outs):
    assert r.returncode == 0, err[-3000:]
  assert f"Resumed from step {start}" in outs[0], outs[0][-3000:]
  got = _records(workdir)
  assert got == _records(ref)
  assert max(got) == until and [s for s in got if s > start], "nothing logged after resuming"


@pytest.mark.parametrize("sig", [signal.SIGINT,
                                 pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_saves_the_current_step_and_resume_matches(sig, tmp_path, subprocess_env):
  workdir = tmp_path / "w"
  run = _Run(_cli_args(workdir, **_SIG_KW), subprocess_env)
  run.wait_for("step  20/400")
  run.proc.send_signal(sig)
  assert run.finish() == 0, run.text[-3000:]
  name = "SIGINT (Ctrl-C)" if sig == signal.SIGINT else "SIGTERM"
  stops = [line for line in run.lines if "Stopping at step" in line]
  assert len(stops) == 1 and f"({name})" in stops[0], run.text[-3000:]
  assert "Traceback" not in run.text and "stop_at_step" not in stops[0]
  step = int(stops[0].split("Stopping at step ")[1].split()[0])
  assert 20 <= step < 400
  # A checkpoint at the current step, complete and verified.
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.all_steps() == [step]
  ckpt.close()
  assert checkpointing.verify_checksums(workdir / "checkpoints" / str(step)) is None
  _resume_and_compare(workdir, tmp_path, subprocess_env, step, (step // 10 + 2) * 10,
                      **_SIG_KW)


def test_second_sigint_exits_at_once(tmp_path, subprocess_env):
  code = (
      "import os, signal, sys, time\n"
      "from attnlab.train import trainer\n"
      "trainer.EXIT_ON_SECOND_INTERRUPT = True  # as python -m attnlab.train sets it\n"
      "with trainer._StopSignal() as s:\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(0.2)\n"
      "  assert s.requested and s.reason == 'SIGINT (Ctrl-C)', s.reason\n"
      "  print('first handled', flush=True)\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(5)\n"
      "print('not reached', flush=True)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 130, (r.stdout, r.stderr[-2000:])
  assert "first handled" in r.stdout and "not reached" not in r.stdout
  assert "Second Ctrl-C: exiting at once" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("during_save", [False, True], ids=["random_step", "during_save"])
def test_kill_9_then_resume_matches(during_save, tmp_path, subprocess_env):
  kw = dict(_SIG_KW, checkpoint_every=7)
  workdir = tmp_path / "w"
  run = _Run(_cli_args(workdir, **kw), subprocess_env)
  # Reproducible: ATTNLAB_FAULT_SEED picks another kill point; the seed is printed.
  seed = int(os.environ.get("ATTNLAB_FAULT_SEED", "8"))
  print(f"kill -9 test seed: {seed} (ATTNLAB_FAULT_SEED)")
  rng = random.Random(seed)
  run.wait_for(f"step  {rng.choice([20, 30, 40])}/400")
  ckpts = workdir / "checkpoints"
  if during_save:  # as soon as orbax has a save in flight (its temporary folder)
    deadline = time.time() + 30
    in_flight = False
    while time.time() < deadline and not in_flight:
      in_flight = any("tmp" in p.name for p in ckpts.glob("*"))
    assert in_flight, "no save in flight seen"
  else:
    time.sleep(rng.uniform(0, 0.2))
  run.proc.kill()
  assert run.finish() == -signal.SIGKILL
  steps = _steps(workdir)
  assert steps and all(s % 7 == 0 for s in steps), (seed, steps)
  if during_save:  # the kill did hit a save: its temporary folder, or no checksums yet
    unfinished = [p.name for p in ckpts.glob("*") if "tmp" in p.name]
    assert unfinished or not (ckpts / str(steps[-1]) / checkpointing.CHECKSUM_FILE).exists(), (
        seed, steps, sorted(p.name for p in ckpts.iterdir()))
  start = steps[-1]
  _resume_and_compare(workdir, tmp_path, subprocess_env, start, (start // 10 + 3) * 10,
                      **kw)


# --- The local launcher: which process died, the others stopped at once. ---

def test_launcher_reports_the_dead_process_and_stops_the_others(tmp_path, monkeypatch):
  (tmp_path / "fake_worker.py").write_text(
      "import sys, time\n"
      "pid = int([a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1])\n"
      "print(f'worker {pid} starting', flush=True)\n"
      "if pid == 1:\n"
      "  print('something went wrong here', flush=True)\n"
      "  sys.exit(7)\n"
      "time.sleep(120)\n")
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  out = io.StringIO()
  t = time.time()
  code = launch_local.launch([], num_processes=2, module="fake_worker", sink=out, timeout=100)
  elapsed = time.time() - t
  log = out.getvalue()
  assert code == 7, log
  assert elapsed < 30, elapsed  # process 0 was not waited for
  assert "process 1 (pid " in log and "died: exit code 7" in log, log
  assert "  [1] something went wrong here" in log, log
  assert "killing the other process(es) [0] now; exiting with status 7" in log, log


@pytest.mark.slow
def test_two_process_run_where_one_process_dies(tmp_path, subprocess_env):
  kw = ["--config.total_steps=400", "--config.log_every=10", "--config.checkpoint_every=10",
        "--config.eval_every=0", "--config.async_checkpointing=False"]
  cmd = [sys.executable, "-m", "attnlab.train.launch_local", "--num_processes", "2",
         "--timeout", "300", "--", "--config", "configs/mqar.py:local"]
  run = subprocess.Popen(cmd + ["--workdir", str(tmp_path / "w")] + kw, cwd=REPO,
                         env=subprocess_env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
  reader.start()
  deadline = time.time() + 240
  while not any("[1]" in line and "step  40/400" in line for line in lines):
    assert run.poll() is None and time.time() < deadline, "".join(lines[-40:])
    time.sleep(0.05)
  children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
  assert len(children) == 2
  t = time.time()
  os.kill(int(children[1]), signal.SIGKILL)
  assert run.wait(timeout=60) == 128 + signal.SIGKILL
  assert time.time() - t < 20
  reader.join(timeout=10)
  log = "".join(lines)
  assert f"process 1 (pid {children[1]}) died: killed by SIGKILL" in log, log[-3000:]
  assert "killing the other process(es) [0] now" in log, log[-3000:]
  for pid in children:
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
        f"/proc/{pid}/status").read_text()
  steps = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and max(steps) >= 30 and all(s % 10 == 0 for s in steps), steps
  # Resume both processes to step 80; compare with an uninterrupted two-process run.
  for name in ("w", "reference"):
    r = subprocess.run(cmd + ["--workdir", str(tmp_path / name), "--config.stop_at_step=80"]
                       + kw, cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
  got, ref = _records(tmp_path / "w"), _records(tmp_path / "reference")
  assert max(got) == 80 and got == ref


@pytest.mark.slow
def test_two_process_start_waits_for_a_slow_process(tmp_path, subprocess_env):
  # Process 1 reaches its first step 40 s after process 0 (as when process 0 loads its
  # programs from a warm compilation cache and process 1 compiles them): longer than the
  # 30 s after which gloo's first collective gives up. The barrier after compilation covers it.
  (tmp_path / "slow_start.py").write_text(
      "import sys, time\n"
      "from attnlab.train import trainer\n"
      "from attnlab.train import __main__ as cli\n"
      "pid = int([a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1])\n"
      "init_state = trainer.Setup.init_state\n"
      "def slow_init_state(self):\n"
      "  if pid == 1:\n"
      "    time.sleep(40)\n"
      "  return init_state(self)\n"
      "trainer.Setup.init_state = slow_init_state\n"
      "cli.run()\n")
  env = dict(subprocess_env, PYTHONPATH=f"{tmp_path}{os.pathsep}{subprocess_env['PYTHONPATH']}")
  r = subprocess.run(
      [sys.executable, "-m", "attnlab.train.launch_local", "--num_processes", "2", "--timeout",
       "400", "--module", "slow_start", "--", "--config", "configs/mqar.py:local",
       "--workdir", str(tmp_path / "w"),
       "--config.total_steps=4", "--config.log_every=2", "--config.eval_every=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=450)
  assert r.returncode == 0, r.stdout[-4000:]
  assert "DEADLINE_EXCEEDED" not in r.stdout
  waited = [float(line.split("waited ")[1].split("s")[0]) for line in r.stdout.splitlines()
            if line.startswith("[0] ") and "processes are ready" in line]
  assert len(waited) == 1 and waited[0] > 30, r.stdout[-4000:]
  assert [x["step"] for x in read_metrics(tmp_path / "w") if "train/loss" in x] == [2, 4]
