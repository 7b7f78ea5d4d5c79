"""Config files load and validate; unknown keys, bad values and unknown names fail clearly."""

import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.train import config_lib
from attnlab.train.config_lib import ConfigError


@pytest.mark.parametrize("name,arg", [("lm_bytes", ""), ("lm_bytes", "local"),
                                      ("lm_bytes", "runlocal"), ("mqar", ""),
                                      ("mqar", "local")])
def test_shipped_configs_validate(config_loader, name, arg):
  c = config_loader(name, arg)
  config_lib.validate_config(c)
  assert c.model.attention.mechanism == "softmax"
  assert c.total_steps > 0


def test_config_arg_is_checked(config_loader):
  with pytest.raises(ValueError, match="unknown argument"):
    config_loader("lm_bytes", "huge")


def _error(config):
  with pytest.raises(ConfigError) as e:
    config_lib.validate_config(config)
  return str(e.value)


def test_unknown_keys(make_config):
  c = make_config()
  c.totl_steps = 5
  assert "config.totl_steps" in _error(c)
  c = make_config()
  c.model.num_layer = 2
  assert "model.num_layer" in _error(c)
  c = make_config()
  c.optimizer.learnig_rate = 1.0
  assert "optimizer.learnig_rate" in _error(c)
  c = make_config()
  c.data.seq_length = 5
  assert "seq_length" in _error(c)


def test_missing_key(make_config):
  c = make_config()
  del c["total_steps"]
  assert "missing required key(s) ['config.total_steps']" in _error(c)


@pytest.mark.parametrize("key,value,match", [
    ("total_steps", 0, "total_steps must be >= 1"),
    ("batch_size", -8, "batch_size must be >= 1"),
    ("log_every", 0, "log_every must be >= 1"),
    ("grad_accum_steps", 3, "divisible by config.grad_accum_steps=3"),
    ("optimizer__learning_rate", 0.0, "learning_rate must be > 0"),
    ("optimizer__name", "adamax", "'adamax' is not a known optimizer"),
    ("schedule__name", "cosine_restarts", "'cosine_restarts' is not a known schedule"),
    ("schedule__warmup_steps", 10_000, "exceeds config.total_steps"),
    ("schedule__decay_shape", "exp", "decay_shape='exp'"),
    ("model__d_model", 0, "model.d_model must be >= 1"),
    ("model__max_len", 8, "max_len=8 is smaller than config.data.seq_len"),
    ("mesh__shape", (-1, -1, 1), "at most one -1"),
    ("mesh__axes", ("data", "data", "x"), "distinct names"),
    ("logical_axis_rules", [("embed", "model")], "not in config.mesh.axes"),
    ("data__name", "wikipedia", "data name must be one of"),
])
def test_bad_values(make_config, key, value, match):
  c = make_config()
  node = c
  parts = key.split("__")
  for p in parts[:-1]:
    node = node[p]
  with node.ignore_type():
    node[parts[-1]] = value
  assert match in _error(c)


def test_unknown_mechanism_lists_known_ones(make_config):
  c = make_config()
  c.model.attention.mechanism = "hyperbolic"
  msg = _error(c)
  assert "'hyperbolic' is not a registered attention mechanism" in msg
  assert "softmax" in msg


def test_runtime_checks():
  c = config_lib.base_config()
  c.batch_size = 12
  with pytest.raises(ConfigError, match="batch_size=12 must be divisible"):
    config_lib.validate_runtime(c, {"data": 8, "fsdp": 1, "tensor": 1}, 1)
  c.batch_size = 16
  c.grad_accum_steps = 4
  with pytest.raises(ConfigError, match="times config.grad_accum_steps=4"):
    config_lib.validate_runtime(c, {"data": 8, "fsdp": 1, "tensor": 1}, 1)
  c.grad_accum_steps = 2
  config_lib.validate_runtime(c, {"data": 8, "fsdp": 1, "tensor": 1}, 1)
  with pytest.raises(ConfigError, match="needs 4 devices, but 8"):
    config_lib.resolve_mesh_shape((2, 2, 1), 8)
  assert config_lib.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)


def _cli(args, env, timeout=120):
  return subprocess.run([sys.executable, "-m", "attnlab.train", *args], env=env,
                        capture_output=True, text=True, timeout=timeout,
                        cwd=Path(__file__).resolve().parents[2])


def test_cli_rejects_unknown_override(tmp_path, subprocess_env):
  r = _cli(["--config", "configs/mqar.py:local", "--workdir", str(tmp_path),
            "--config.total_step=3"], subprocess_env)
  assert r.returncode != 0
  assert "total_step" in r.stderr


def test_cli_rejects_unknown_mechanism(tmp_path, subprocess_env):
  r = _cli(["--config", "configs/mqar.py:local", "--workdir", str(tmp_path),
            "--config.model.attention.mechanism=nope"], subprocess_env)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "'nope' is not a registered attention mechanism" in r.stderr
