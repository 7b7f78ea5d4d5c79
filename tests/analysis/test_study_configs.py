"""configs/mqar_study.py and configs/lm_bytes_study.py (the issue-12 known-answer runs) build
valid training configs; their arguments are checked."""

import importlib.util
import os

import pytest

from attnlab.train import config_lib

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load(name):
  spec = importlib.util.spec_from_file_location(f"study_{name}",
                                                os.path.join(CONFIGS, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("arg, layers, heads, wd", [
    ("", 2, 4, 0.0), ("heads=4,wd=0.1", 2, 4, 0.1), ("layers=3,heads=2", 3, 2, 0.0),
    ("local,heads=2", 2, 2, 0.1)])  # local: configs/mqar.py:local (its weight decay)
def test_mqar_study(arg, layers, heads, wd):
  c = load("mqar_study").get_config(arg)
  config_lib.validate_config(c)
  assert (c.model.num_layers, c.model.num_heads) == (layers, heads)
  assert c.optimizer.weight_decay == pytest.approx(wd)
  with pytest.raises(ValueError, match="unknown argument"):
    load("mqar_study").get_config("depth=3")


def test_lm_bytes_study():
  mod = load("lm_bytes_study")
  c = mod.get_config("")
  config_lib.validate_config(c)
  assert (c.model.num_layers, c.model.num_heads, c.data.seq_len) == (2, 4, 256)
  config_lib.validate_config(mod.get_config("local"))
  with pytest.raises(ValueError, match="unknown argument"):
    mod.get_config("longer")
  c = mod.get_config("induction")
  config_lib.validate_config(c)
  assert (c.data.bos, c.data.repeat_prob, tuple(c.data.repeat_len)) == (0, 1.0, (8, 24))
  assert (c.model.num_layers, c.model.num_heads, c.batch_size) == (2, 4, 64)
  assert (c.data.seq_len, c.model.max_len) == (64, 256)
