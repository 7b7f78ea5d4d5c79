"""End-to-end through the command lines: train CLI, two-process launch, plot."""

import io
import json
import subprocess
import sys
from pathlib import Path

from attnlab.train import launch_local, plot
from attnlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


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
