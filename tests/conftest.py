"""Test set-up: eight CPU devices for mesh/pmap/shard_map tests, set before jax is imported."""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# The suite is dominated by XLA:CPU compile time (small shapes, many programs). LLVM
# optimisation level 1 compiles about 40% faster than the default; it changes code generation,
# not the HLO, so results differ at most by float rounding, far inside the tests' tolerances.
# (Level 0 is as fast but its exp overflows differently in one extreme-logit gradient test,
# test_gpsa_vs_naive_and_grads: NaN instead of the reference's inf; level 1 and the default
# agree.) ATTNLAB_TEST_FULL_OPT=1 keeps the default level.
_fast = "--xla_backend_optimization_level=1"
if not os.environ.get("ATTNLAB_TEST_FULL_OPT") and "xla_backend_optimization_level" not in (
    os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + " " + _fast).strip()
if os.environ.get("ATTNLAB_TEST_CPU"):  # force CPU even where a GPU is present
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Cases marked ``slow`` (multi-process runs, long end-to-end checks, extra shapes of logic
  the fast cases already cover) are skipped unless selected with ``-m slow`` or
  ATTNLAB_RUN_SLOW=1, so the README's test command stays within CI's time."""
  markexpr = config.getoption("markexpr", "") or ""
  if "slow" in markexpr or os.environ.get("ATTNLAB_RUN_SLOW") == "1":
    return
  skip = pytest.mark.skip(reason="slow case: run with -m slow or ATTNLAB_RUN_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)

jax.config.update("jax_default_matmul_precision", "highest")
