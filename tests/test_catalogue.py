"""Every catalogue entry trains a few MQAR steps from its config overrides (issue item (e)).

For each registered mechanism, ``configs/mechanisms.py:<name>,local`` (the tiny MQAR config
plus the entry's overrides) trains 3 steps through the real trainer; the losses must be
finite and the parameters must move.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

import attnlab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_configs():
  path = os.path.join(ROOT, "configs", "mechanisms.py")
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _all_names():
  import attnlab.nn  # noqa: F401  (registers module-level mechanisms)
  return attnlab.list_mechanisms()


@pytest.mark.parametrize("name", _all_names())
def test_mechanism_trains_mqar(name, tmp_path):
  from attnlab.train import trainer
  config = _load_configs().get_config(f"{name},local")
  config.total_steps = 3
  config.schedule.warmup_steps = 1  # the local config warms up for 5 steps
  config.log_every = 1
  config.eval_every = 3
  config.eval_steps = 1
  config.checkpoint_every = 3
  trainer.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(losses) == 3, records
  assert np.all(np.isfinite(losses)), losses
  assert any("eval/loss" in r and np.isfinite(r["eval/loss"]) for r in records)
  # The update did something: the grad norm is positive and finite.
  norms = [r["train/grad_norm"] for r in records if "train/grad_norm" in r]
  assert norms and all(np.isfinite(n) and n > 0 for n in norms), norms


def test_catalogue_lists_and_documents_everything():
  import attnlab.nn  # noqa: F401
  for name in attnlab.list_mechanisms():
    entry = attnlab.get_mechanism(name)
    assert entry.paper, f"{name}: no paper"
    assert entry.config, f"{name}: no config overrides"


def test_bad_mechanism_name_in_config():
  with pytest.raises(ValueError, match="unknown mechanism"):
    _load_configs().get_config("not_a_mechanism,local")
