"""Fixtures for the trainer tests: tiny configs and a persistent XLA compilation cache.

The persistent compilation cache (also passed to subprocesses via JAX_COMPILATION_CACHE_DIR)
makes repeated compilations of the same tiny programs (stop + resume, CLI runs, and later test
sessions) cheap. It lives in ``$ATTNLAB_TEST_COMPILATION_CACHE`` or
``<tmp>/attnlab_jax_test_cache``; entries are keyed by the program and the jax version.
"""

import importlib.util
import os
import tempfile
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def load_config(name: str, arg: str = ""):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_config(name: str = "mqar", **overrides):
  """The "local" variant of configs/<name>.py, shrunk further; keys as dotted overrides."""
  c = load_config(name, "local")
  c.log_every = 2
  c.eval_every = 0
  c.eval_steps = 1
  c.checkpoint_every = 0
  c.async_checkpointing = False
  for key, value in overrides.items():
    node = c
    parts = key.split("__")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = value
  return c


@pytest.fixture(scope="session")
def compile_cache_dir():
  path = Path(os.environ.get("ATTNLAB_TEST_COMPILATION_CACHE")
              or Path(tempfile.gettempdir()) / "attnlab_jax_test_cache")
  path.mkdir(parents=True, exist_ok=True)
  return str(path)


@pytest.fixture(autouse=True, scope="session")
def _persistent_compilation_cache(compile_cache_dir):
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs,
         jax.config.jax_persistent_cache_min_entry_size_bytes)
  jax.config.update("jax_compilation_cache_dir", compile_cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", old[2])


@pytest.fixture
def subprocess_env(compile_cache_dir):
  """Environment for `python -m attnlab.train...` subprocesses (CPU, one device, cache)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + ["--xla_force_host_platform_device_count=1"])
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = compile_cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


@pytest.fixture
def make_config():
  """``make_config(name="mqar", **overrides)`` -> a tiny config (see tiny_config)."""
  return tiny_config


@pytest.fixture
def config_loader():
  """``config_loader(name, arg="")`` -> configs/<name>.py's get_config(arg)."""
  return load_config
