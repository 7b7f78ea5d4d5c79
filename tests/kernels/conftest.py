"""Kernel tests run the Pallas kernels in interpret mode on CPU.

Cases marked ``slow`` are skipped unless selected with ``-m slow`` (or ATTNLAB_RUN_SLOW=1);
cases marked ``gpu`` are skipped unless JAX's default backend is a GPU.
"""

import os

import jax
import pytest


def pytest_collection_modifyitems(config, items):
  markexpr = config.getoption("markexpr", "") or ""
  run_slow = "slow" in markexpr or os.environ.get("ATTNLAB_RUN_SLOW") == "1"
  on_gpu = jax.default_backend() == "gpu"
  for item in items:
    if "slow" in item.keywords and not run_slow and "kernels" in str(item.fspath):
      item.add_marker(pytest.mark.skip(reason="slow kernel case: run with -m slow"))
    if "gpu" in item.keywords and not on_gpu and "kernels" in str(item.fspath):
      item.add_marker(pytest.mark.skip(reason="needs a GPU (jax.default_backend() == 'gpu')"))
