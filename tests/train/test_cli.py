"""End-to-end through the command lines: train CLI, two-process launch, plot; user errors of
the train CLI (one ``error:`` line on stderr, exit status 2, no traceback)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from attnlab.train import checkpointing, launch_local, plot
from attnlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _train_cli(args, env, timeout=120):
  return subprocess.run([sys.executable, "-m", "attnlab.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(r, code=2) -> str:
  """The single ``error: ...`` line of a failed run (and no traceback anywhere)."""
  assert r.returncode == code, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
  lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, r.stderr[-3000:]
  return lines[0]


_MQAR = ["--config", "configs/mqar.py:local"]


@pytest.mark.parametrize("args,needles", [
    # Unknown override keys: the key, what was given, the keys valid at that level.
    (_MQAR + ["--config.no_such=1"],
     ["unknown config key config.no_such", "--config.no_such=1", "batch_size, "]),
    (_MQAR + ["--config.model.attention.no_such=1"],
     ["config.model.attention.no_such", "under config.model.attention", "mechanism"]),
    (_MQAR + ["--config.total_step=3"], ["config.total_step", "config.total_steps?"]),
    # A value of the wrong type.
    (_MQAR + ["--config.total_steps=abc"], ["config.total_steps", "'abc'", "int"]),
    # The config file does not exist / its get_config raises.
    (["--config", "configs/nope.py"], ["configs/nope.py does not exist"]),
    (["--config", "configs/mechanisms.py:not_a_mechanism"],
     ["configs/mechanisms.py:not_a_mechanism", "ValueError", "'not_a_mechanism'"]),
    # validate_config (a ConfigError): an unknown mechanism.
    (_MQAR + ["--config.model.attention.mechanism=nope"],
     ["invalid config", "config.model", "'nope'", "softmax"]),
], ids=["unknown_key", "unknown_nested_key", "typo", "bad_type", "missing_file",
        "get_config_raises", "unknown_mechanism"])
def test_user_errors_print_one_line(tmp_path, subprocess_env, args, needles):
  line = _one_error_line(_train_cli(args + ["--workdir", str(tmp_path / "w")],
                                    subprocess_env))
  for needle in needles:
    assert needle in line, line
  assert not (tmp_path / "w").exists()  # nothing was started


def test_bad_module_argument_prints_one_line(tmp_path, subprocess_env):
  # A value only the module's constructor can judge (checked when the model is built).
  line = _one_error_line(_train_cli(
      ["--config", "configs/mechanisms.py:deberta,local", "--workdir", str(tmp_path / "w"),
       "--config.model.attention.kwargs.max_distance=-1"], subprocess_env))
  assert "config.model" in line and "max_distance" in line and "-1" in line, line


def test_workdir_that_is_a_file(tmp_path, subprocess_env):
  f = tmp_path / "notes.txt"
  f.write_text("x")
  line = _one_error_line(_train_cli(_MQAR + ["--workdir", str(f)], subprocess_env))
  assert str(f) in line and "is a file" in line


def test_checkpoint_of_another_model_is_refused(tmp_path, subprocess_env, config_loader):
  # A workdir as a run of configs/mqar.py:local (d_model 32) leaves it: config.json and a
  # checkpoint (a stand-in state: the model check comes before any restore).
  config = config_loader("mqar", "local")
  assert config.model.d_model == 32 and config.model.mlp_dim == 64
  checkpointing.write_run_config(tmp_path, config.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False)
  ckpt.manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(
      {"step": np.zeros((), np.int32)})))
  ckpt.close()
  r = _train_cli(_MQAR + ["--workdir", str(tmp_path), "--config.total_steps=2",
                          "--config.model.d_model=64", "--config.model.mlp_dim=128"],
                 subprocess_env)
  line = _one_error_line(r)
  assert f"the checkpoint in {tmp_path} was written with model.d_model=32" in line, line
  assert "64" in line and "model.mlp_dim=64" in line and "128" in line, line


@pytest.mark.slow
def test_non_finite_loss_exits_3(tmp_path, subprocess_env):
  r = _train_cli(_MQAR + ["--workdir", str(tmp_path), "--config.total_steps=2",
                          "--config.debug_nan_at_step=1", "--config.eval_every=0",
                          "--config.async_checkpointing=False"], subprocess_env, timeout=300)
  line = _one_error_line(r, code=3)
  assert "non-finite" in line and "at step 1" in line


def test_train_cli_runs_and_resumes(tmp_path, subprocess_env):
  args = [sys.executable, "-m", "attnlab.train", "--config", "configs/lm_bytes.py:local",
          "--workdir", str(tmp_path), "--config.total_steps=4", "--config.log_every=2",
          "--config.eval_every=4", "--config.eval_steps=1", "--config.schedule.warmup_steps=2",
          "--config.model.attention.mechanism=softmax"]
  # First stopped after step 2 (as if preempted), then resumed to the end.
  r = subprocess.run(args + ["--config.stop_at_step=2"], cwd=REPO, env=subprocess_env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step 2/4" in r.stderr and "ETA" in r.stderr and "tok/s" in r.stderr
  assert "Stopping at step 2" in r.stderr
  r = subprocess.run(args, cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from step 2" in r.stderr
  records = read_metrics(tmp_path)
  train = [x for x in records if "train/loss" in x]
  evals = [x for x in records if "eval/loss" in x]
  assert [x["step"] for x in train] == [2, 4]
  for key in ("train/lr", "train/grad_norm", "perf/tokens_per_sec", "perf/step_time_s",
              "perf/mfu", "train/bits_per_byte"):
    assert key in train[-1], key
  assert [x["step"] for x in evals] == [0, 4]
  assert abs(evals[-1]["eval/bits_per_byte"] * 0.6931471805599453
             - evals[-1]["eval/loss"]) < 1e-9
  assert list((tmp_path / "tb").iterdir())


def test_two_process_run_on_localhost(tmp_path, subprocess_env, monkeypatch):
  for k, v in subprocess_env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.chdir(REPO)
  out = io.StringIO()
  code = launch_local.launch(
      ["--config", "configs/mqar.py:local", "--workdir", str(tmp_path),
       "--config.total_steps=4", "--config.schedule.warmup_steps=2",
       "--config.log_every=2", "--config.checkpoint_every=2",
       "--config.eval_steps=1", "--config.async_checkpointing=False"],
      num_processes=2, devices_per_process=1, timeout=240, sink=out)
  log = out.getvalue()
  assert code == 0, log[-4000:]
  assert "2 process(es), 2 device(s)" in log
  assert "[0] " in log and "[1] " in log
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4]
  ckpt = tmp_path / "checkpoints" / "4" / "data_iter"
  assert sorted(p.name for p in ckpt.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def _fake_run(path: Path, scale: float):
  path.mkdir(parents=True)
  with (path / "metrics.jsonl").open("w") as f:
    for s in range(10, 110, 10):
      f.write(json.dumps({"step": s, "train/loss": scale * 5.0 / s ** 0.5}) + "\n")
      if s % 50 == 0:
        f.write(json.dumps({"step": s, "eval/loss": scale * 6.0 / s ** 0.5,
                            "eval/bits_per_byte": scale * 8.0 / s ** 0.5}) + "\n")


def test_plot_writes_png(tmp_path):
  _fake_run(tmp_path / "softmax", 1.0)
  _fake_run(tmp_path / "sigmoid", 1.1)
  out = tmp_path / "cmp.png"
  assert plot.main([str(tmp_path / "softmax"), str(tmp_path / "sigmoid"), "--out", str(out),
                    "--keys", "train/loss", "eval/loss", "--labels", "softmax",
                    "sigmoid"]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Default keys and output path for one workdir, via the module command line.
  r = subprocess.run([sys.executable, "-m", "attnlab.train.plot", str(tmp_path / "softmax")],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "softmax" / "curves.png").stat().st_size > 1000
  assert plot.main([str(tmp_path / "missing")]) == 2
