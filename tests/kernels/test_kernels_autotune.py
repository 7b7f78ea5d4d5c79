"""Autotuner cache logic with a fake timing function (no kernel is ever timed in tests)."""

import json

import jax.numpy as jnp
import pytest

from attnlab.kernels.flash import autotune

KEY_ARGS = dict(backend="triton", interpret=False, dtype=jnp.bfloat16, head_dim=128,
                q_len=8192, kv_len=8192, mask_kind="causal", normalizer="softmax",
                device="NVIDIA H100 80GB HBM3")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
  monkeypatch.delenv(autotune.AUTOTUNE_ENV, raising=False)
  autotune._memory.clear()
  yield tmp_path
  autotune._memory.clear()


class FakeTimer:
  """Pretends (64, 128) forward and (32, 64) backward tiles are fastest."""

  def __init__(self):
    self.calls = []

  def __call__(self, cfg, direction):
    self.calls.append((direction, dict(cfg)))
    if direction == "fwd":
      return 1.0 + abs(cfg["block_q"] - 64) + abs(cfg["block_k"] - 128) + cfg["num_warps"] / 100
    return 2.0 + abs(cfg["block_q_bwd"] - 32) + abs(cfg["block_k_bwd"] - 64)


def test_interpret_never_tunes_or_writes(cache_dir):
  timer = FakeTimer()
  cfg = autotune.block_config(**{**KEY_ARGS, "interpret": True}, measure=timer)
  assert cfg == autotune.INTERPRET_DEFAULT
  assert not timer.calls and not (cache_dir / autotune.CACHE_FILE).exists()


def test_tunes_once_then_reads_cache(cache_dir):
  timer = FakeTimer()
  cfg = autotune.block_config(**KEY_ARGS, measure=timer)
  assert (cfg["block_q"], cfg["block_k"], cfg["num_warps"]) == (64, 128, 4)
  assert (cfg["block_q_bwd"], cfg["block_k_bwd"]) == (32, 64)
  fwd_cands, bwd_cands = autotune.candidates("triton", 128)
  assert len(timer.calls) == len(fwd_cands) + len(bwd_cands)
  # Backward candidates are timed with the winning forward configuration.
  assert all(c["block_q"] == 64 for d, c in timer.calls if d == "bwd")

  data = json.loads((cache_dir / autotune.CACHE_FILE).read_text())
  key = autotune.make_key(**{k: v for k, v in KEY_ARGS.items() if k != "interpret"})
  assert data["entries"][key]["block_k"] == 128 and "timings_s" in data["entries"][key]

  # Same process, and a "new process" (memory cache cleared): no more measuring.
  again = FakeTimer()
  assert autotune.block_config(**KEY_ARGS, measure=again) == cfg
  autotune._memory.clear()
  assert autotune.block_config(**KEY_ARGS, measure=again) == cfg
  assert not again.calls
  # Lengths are bucketed to powers of two: 8000 shares the 8192 entry.
  assert autotune.block_config(**{**KEY_ARGS, "q_len": 8000}, measure=again) == cfg
  assert not again.calls


def test_keys_separate_devices_and_settings(cache_dir):
  autotune.block_config(**KEY_ARGS, measure=FakeTimer())
  timer = FakeTimer()
  autotune.block_config(**{**KEY_ARGS, "normalizer": "sigmoid"}, measure=timer)
  autotune.block_config(**{**KEY_ARGS, "device": "NVIDIA H200"}, measure=timer)
  autotune.block_config(**{**KEY_ARGS, "dtype": jnp.float32}, measure=timer)
  n = len(autotune.candidates("triton", 128)[0]) + len(autotune.candidates("triton", 128)[1])
  assert len(timer.calls) == 3 * n
  entries = autotune.load_cache(cache_dir / autotune.CACHE_FILE)
  assert len(entries) == 4


def test_disabled_or_failing_measurements_use_heuristic(cache_dir, monkeypatch):
  monkeypatch.setenv(autotune.AUTOTUNE_ENV, "0")
  timer = FakeTimer()
  assert autotune.block_config(**KEY_ARGS, measure=timer) == autotune.heuristic("triton", 128)
  assert not timer.calls
  monkeypatch.delenv(autotune.AUTOTUNE_ENV)
  cfg = autotune.block_config(**KEY_ARGS, measure=lambda cfg, direction: float("inf"))
  assert cfg == autotune.heuristic("triton", 128)
  assert not (cache_dir / autotune.CACHE_FILE).exists()  # a guess is not cached


def test_corrupt_cache_is_ignored_and_replaced(cache_dir):
  (cache_dir / autotune.CACHE_FILE).write_text("{not json")
  cfg = autotune.block_config(**KEY_ARGS, measure=FakeTimer())
  assert cfg["block_q"] == 64
  assert len(autotune.load_cache(cache_dir / autotune.CACHE_FILE)) == 1


def test_cache_dir_argument_and_default_location(tmp_path, monkeypatch):
  monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert autotune.cache_path() == tmp_path / "home" / ".cache" / "attnlab" / "autotune.json"
  assert autotune.cache_path(tmp_path / "x") == tmp_path / "x" / "autotune.json"


def test_measure_runs_for_real_inside_a_trace():
  """The kernel's timing hook escapes the caller's jit trace (it runs in a helper thread)."""
  import jax
  from attnlab import masks
  from attnlab.kernels import flash_attention

  seen = {}
  cfg = dict(autotune.INTERPRET_DEFAULT)

  def f(q):
    seen["t"] = autotune.measure_candidate(
        flash_attention, cfg, q=q, k=q, v=q, mask=masks.CausalMask(), normalizer="softmax",
        backend="triton", interpret=True, runs=1)
    return q * 2

  jax.jit(f)(jnp.zeros((1, 32, 1, 64)))
  assert 0.0 < seen["t"] < float("inf")
