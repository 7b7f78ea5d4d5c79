"""configs/grid2d.py (the 2D grid task for the grid mechanisms) and its comparison driver
attnlab/train/compare_grid.py: the configs validate with the mechanisms' 2D layout matching
the data grid, the tiny variant trains, and the driver's table statistics."""

import numpy as np
import pytest

from attnlab import data as data_lib
from attnlab.train import compare_grid
from attnlab.train import config_lib
from attnlab.train import trainer


@pytest.mark.parametrize("arg", ["", "local", "16x16"])
@pytest.mark.parametrize("name", compare_grid.config_module().COMPARE_NAMES)
def test_configs_validate_with_the_data_grid(config_loader, name, arg):
  config = config_loader("grid2d", ",".join(p for p in (name, arg) if p))
  config_lib.validate_config(config)
  d, m = config.data, config.model
  assert d.name == "grid_quadrant" and d.seq_len == d.grid_height * d.grid_width
  assert m.name == "encoder_classifier" and m.pooling == "cls" and m.max_len == d.seq_len
  assert m.num_classes == data_lib.num_classes(d) == 4
  assert m.attention.mechanism == name
  if arg == "16x16":
    assert (d.grid_height, d.grid_width) == (16, 16)
  kw = m.attention.kwargs
  if "grid_shape" in kw:
    assert tuple(kw.grid_shape) == (d.grid_height, d.grid_width)
  for key in ("group_size", "block_size"):  # 1D groups / blocks: whole grid rows (fit, moba)
    if key in kw and name in ("fit", "moba"):
      assert kw[key] == d.grid_width
  assert name in ("softmax", "axial", "fit") or "top_k" in kw or "halo" in kw


@pytest.mark.parametrize("arg,match", [
    ("softmax,axial", "one mechanism"), ("8x8,4x4", "one mechanism"),
    ("lowrank_mha_pool", "changes the task"), ("no_such_mechanism", "no_such_mechanism")])
def test_bad_arguments(config_loader, arg, match):
  with pytest.raises(ValueError, match=match):
    config_loader("grid2d", arg)


@pytest.mark.parametrize("name", ["softmax", pytest.param("halo", marks=pytest.mark.slow)])
def test_local_variant_trains_two_steps(make_config, name, config_loader):
  config = make_config("grid2d") if name == "softmax" else config_loader(
      "grid2d", f"{name},local")
  setup = trainer.Setup(config)
  assert setup.task == "classification"
  state = setup.init_state()
  it = data_lib.data_iterator(config.data, "train", global_batch_size=config.batch_size,
                              seed=0)
  losses = []
  for _ in range(2):
    batch = next(it)
    assert batch["inputs"].shape == (config.batch_size, config.data.seq_len)
    state, m = setup.train_step(state, setup.global_batch(batch))
    losses.append(float(m["train/loss"]))
  assert np.all(np.isfinite(losses))
  stats = setup.eval_step(state, setup.global_batch(batch))
  assert float(stats["weight_sum"]) == config.batch_size
  assert 0 <= float(stats["correct_sum"]) <= config.batch_size


def test_aggregate_statistics_and_table():
  runs = [{"mechanism": "a", "seed": s, "final_accuracy": acc, "best_accuracy": acc + 0.1,
           "final_eval_loss": 1.0 - acc, "step_ms": 10.0 * (s + 1), "curve": [[0, 0.25], [10, acc]]}
          for s, acc in enumerate([0.5, 0.7, 0.9])]
  runs += [{"mechanism": "b", "seed": 0, "final_accuracy": 1.0, "best_accuracy": 1.0,
            "final_eval_loss": 0.0, "step_ms": None, "curve": [[10, 1.0]]},
           {"mechanism": "b", "seed": 1, "error": "ValueError: boom"}]
  rows = compare_grid.aggregate(runs, ["a", "b"])
  assert [r["mechanism"] for r in rows] == ["b", "a"]  # best mean first
  a = rows[1]["final_accuracy"]
  np.testing.assert_allclose([a["mean"], a["std"], a["min"], a["max"]],
                             [0.7, np.std([0.5, 0.7, 0.9]), 0.5, 0.9])
  assert rows[0]["errors"] == ["seed 1: ValueError: boom"] and rows[0]["seeds"] == [0]
  assert rows[1]["step_ms_mean"] == 20.0 and rows[0]["step_ms_mean"] is None
  lines = compare_grid.table(rows)
  assert "0.700 ± 0.163" in lines[3] and "0.500–0.900" in lines[3]
  assert "failed: seed 1: ValueError: boom" in lines[2]
