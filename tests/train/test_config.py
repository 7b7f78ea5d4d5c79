"""Config files load and validate; unknown keys, bad values and unknown names fail clearly.

``config_lib.validate_config`` checks the trainer keys and delegates ``config.model`` to one
call of ``attnlab.models.validate_model_config``; the command-line errors are in
test_cli.py.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.train import config_lib, optim
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
  c.optimizer.learnig_rate = 1.0
  assert "optimizer.learnig_rate" in _error(c)
  c = make_config()
  c.data.seq_length = 5
  assert "seq_length" in _error(c)


def _models_rejects(mutate) -> bool:
  """Whether attnlab.models.validate_model_config rejects the default model config after
  `mutate` (config_lib leaves model keys and names to it)."""
  from attnlab import models
  cfg = models.default_model_config()
  mutate(cfg)
  try:
    models.validate_model_config(cfg)
  except (ValueError, TypeError):
    return True
  return False


@pytest.mark.parametrize("key,value", [("num_layer", 2), ("name", "transformer_xl")])
def test_unknown_model_key_or_name(make_config, key, value):
  def mutate(cfg):
    with cfg.unlocked():
      cfg[key] = value

  if not _models_rejects(mutate):
    pytest.skip(f"attnlab.models.validate_model_config does not reject model.{key}={value!r} "
                "yet (config_lib delegates model checks to it)")
  c = make_config()
  mutate(c.model)
  msg = _error(c)
  assert "config.model" in msg and key in msg


@pytest.mark.parametrize("raised,reported", [
    ("unknown model config key(s) ['num_layer']",
     "config.model: unknown model config key(s) ['num_layer']"),
    ("attention.mechanism='x': unknown", "config.model.attention.mechanism='x': unknown"),
])
def test_model_section_is_one_call_to_models(make_config, monkeypatch, raised, reported):
  from attnlab import models
  calls = []

  def fake(cfg):
    calls.append(cfg)
    raise ValueError(raised)

  monkeypatch.setattr(models, "validate_model_config", fake)
  c = make_config()
  c.total_steps = 0
  msg = _error(c)
  assert len(calls) == 1 and calls[0] is c.model
  # Every problem, on one line: the trainer's and the model's.
  assert reported in msg
  assert "total_steps must be >= 1" in msg
  assert "\n" not in msg


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
    ("schedule__decay_shape", "exp", "decay_shape='exp'"),
    ("model__d_model", 0, "d_model"),
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
  msg = _error(c)
  assert match in msg
  if key.startswith("model__"):
    assert "config.model" in msg


def test_unknown_mechanism_lists_known_ones(make_config):
  c = make_config()
  c.model.attention.mechanism = "hyperbolic"
  msg = _error(c)
  assert "config.model" in msg and "'hyperbolic'" in msg
  assert "attention.mechanism" in msg or "attention mechanism" in msg
  assert "softmax" in msg  # the valid names are listed


def test_warmup_longer_than_the_run_is_clamped(make_config, monkeypatch):
  c = make_config(total_steps=20, schedule__warmup_steps=100)
  config_lib.validate_config(c)  # not an error any more
  warnings = []
  monkeypatch.setattr(optim.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  c.schedule.name = "constant"
  _, schedule = optim.make_optimizer(c)
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert "warmup_steps=100" in warnings[0] and "total_steps=20" in warnings[0]
  peak = c.optimizer.learning_rate
  assert float(schedule(10)) == pytest.approx(peak * 10 / 20)  # warmup over the 20 steps
  assert float(schedule(20)) == pytest.approx(peak)


def test_validate_config_needs_no_jax_backend(subprocess_env):
  """validate_config runs before jax.distributed.initialize(): it must not start a backend."""
  code = """if True:
    import importlib.util, sys
    from jax._src import xla_bridge
    from attnlab.train import config_lib
    spec = importlib.util.spec_from_file_location("c", "configs/mqar.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    c = m.get_config("local")
    c.model.attention.implementation = "xla"
    config_lib.validate_config(c)
    print("xla", xla_bridge.backends_are_initialized())
    c.model.attention.implementation = "auto"
    config_lib.validate_config(c)
    print("auto", xla_bridge.backends_are_initialized())
  """
  r = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True,
                     text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "xla False" in r.stdout, r.stdout
  assert "auto False" in r.stdout, r.stdout


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
