"""configs/grid2d.py (the 2D grid task for the grid mechanisms): the configs validate with the
mechanisms' 2D layout matching the data grid, the tiny variant trains, and
``python -m attnlab.train.compare --configs configs/grid2d.py`` drives it."""

import json
from pathlib import Path

import numpy as np
import pytest

from attnlab import data as data_lib
from attnlab.train import compare
from attnlab.train import config_lib
from attnlab.train import trainer


_GRID2D = Path(__file__).resolve().parents[2] / "configs" / "grid2d.py"


@pytest.mark.parametrize("arg", ["", "local", "16x16"])
@pytest.mark.parametrize("name", compare._configs_module(_GRID2D).COMPARE_NAMES)
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
    ("3x3", "even sides >= 4"), ("6x5", "even sides >= 4"),
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


def test_compare_drives_the_grid_task(tmp_path, capsys):
  """The comparison driver with --configs configs/grid2d.py: grid runs, the task's defaults."""
  work = tmp_path / "runs"
  assert compare.main(["--configs", str(_GRID2D), "--config", "local", "--workdir", str(work),
                       "--steps", "2", "--eval_every", "1", "--names", "softmax"]) == 0
  cfg = json.loads((work / "softmax" / "seed0" / "config.json").read_text())
  assert cfg["data"]["name"] == "grid_quadrant" and cfg["total_steps"] == 2
  assert cfg["model"]["name"] == "encoder_classifier"
  summary = json.loads((work / "summary.json").read_text())
  assert summary["config"] == "configs/grid2d.py:<name>,local"
  (row,) = summary["rows"]
  assert row["mechanism"] == "softmax" and row["seeds"] == [0]
  assert row["curve"]["step"] == [0, 1, 2]
  assert 0.0 <= row["mean"] <= 1.0 and row["step_ms"] > 0
  mod = compare._configs_module(_GRID2D)
  assert mod.COMPARE_CHANCE == 1 / cfg["model"]["num_classes"]
  with pytest.raises(SystemExit):  # a bad grid variant is a one-line usage error
    compare.main(["--configs", str(_GRID2D), "--config", "3x3", "--workdir", str(work)])
  assert "even sides >= 4" in capsys.readouterr().err
  # the defaults come from configs/grid2d.py: COMPARE_NAMES, its 400 steps / eval every 50
  with pytest.raises(SystemExit):  # (refused: the local runs above hold another budget)
    compare.main(["--configs", str(_GRID2D), "--workdir", str(work), "--report_only"])
  err = capsys.readouterr().err
  assert "'steps': 400" in err and "'eval_every': 50" in err and "softmax/seed0" in err
  assert compare.main(["--configs", str(_GRID2D), "--workdir", str(tmp_path / "empty"),
                       "--report_only"]) == 0
  rows = json.loads((tmp_path / "empty" / "summary.json").read_text())["rows"]
  assert sorted(r["mechanism"] for r in rows) == sorted(mod.COMPARE_NAMES)
