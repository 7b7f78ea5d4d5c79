"""Checkpoints: save / restore, data-iterator resume, stop + resume == uninterrupted,
keep-last-N, the non-finite stop that keeps the last good checkpoint, and the refusal to
resume a checkpoint of a different model (config.json, then the checkpoint's shapes).

All runs share one model / schedule (BASE), so they compile the same programs (and hit the
persistent compilation cache); host-side keys (log/eval/checkpoint cadence) do not matter.
"""

import json

import chex
import jax
import numpy as np
import pytest

from attnlab.train import checkpointing, trainer
from attnlab.train.metrics import read_metrics

# Dropout on: the per-step RNG streams must resume exactly too.
BASE = dict(total_steps=8, log_every=2, eval_steps=1, model__dropout=0.1)


def test_restore_gives_identical_next_step_and_batches(make_config, tmp_path):
  config = make_config(**BASE)
  setup = trainer.Setup(config)
  it = trainer.make_train_iterator(config)
  state = setup.init_state()
  for _ in range(2):
    state, _ = setup.train_step(state, setup.global_batch(next(it)))
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, async_save=False)
  ckpt.save(2, state, it)
  ckpt.wait()
  expected_batch = next(it)
  _, m = setup.train_step(state, setup.global_batch(expected_batch))
  expected_loss = float(m["train/loss"])

  # A fresh process-like start: new iterator at position 0, restored in place.
  it2 = trainer.make_train_iterator(config)
  ckpt2 = checkpointing.Checkpointer(tmp_path, keep=2, async_save=False)
  step, restored = ckpt2.restore_latest(setup.abstract_state, it2)
  assert step == 2 and int(restored["step"]) == 2
  batch = next(it2)
  for k in expected_batch:
    chex.assert_trees_all_equal(batch[k], expected_batch[k])
  _, m2 = setup.train_step(restored, setup.global_batch(batch))
  assert float(m2["train/loss"]) == expected_loss
  # Restored arrays keep the configured shardings.
  got = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, restored["params"]))
  want = jax.tree.leaves(setup.state_shardings["params"],
                         is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  assert all(g.is_equivalent_to(w, 2) for g, w in zip(got, want))
  ckpt.close()
  ckpt2.close()


def _losses(workdir):
  """Every non-perf metric of every record, by step."""
  out = {}
  for r in read_metrics(workdir):
    out.setdefault(r["step"], {}).update(
        {k: v for k, v in r.items() if k != "step" and not k.startswith("perf/")})
  return out


def test_stop_and_resume_matches_uninterrupted(make_config, tmp_path):
  kw = dict(BASE, eval_every=4, checkpoint_every=4)
  straight = trainer.train_and_evaluate(make_config(**kw), str(tmp_path / "a"))
  assert straight["status"] == "done" and straight["step"] == 8

  first = trainer.train_and_evaluate(make_config(stop_at_step=4, **kw), str(tmp_path / "b"))
  assert first["status"] == "stopped" and first["step"] == 4
  assert checkpointing.Checkpointer(tmp_path / "b").all_steps() == [4]
  second = trainer.train_and_evaluate(make_config(**kw), str(tmp_path / "b"))
  assert second["status"] == "done" and second["step"] == 8

  a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
  assert sorted(a) == [0, 2, 4, 6, 8]
  assert a == b  # bit-identical losses, accuracies, grad norms, eval metrics
  assert "eval/loss" in a[0] and "eval/loss" in a[4] and "eval/loss" in a[8]
  assert (tmp_path / "b" / "tb").is_dir()
  saved = json.loads((tmp_path / "b" / "config.json").read_text())
  assert saved["total_steps"] == 8
  assert saved["stop_at_step"] == 4  # written once, at the first start; not on resume
  assert saved["model"]["dropout"] == 0.1


def test_resume_with_another_model_is_refused(make_config, tmp_path):
  trainer.train_and_evaluate(make_config(total_steps=1, schedule__warmup_steps=1),
                             str(tmp_path))
  other = make_config(total_steps=2, schedule__warmup_steps=1, model__d_model=64)
  # config.json's model section differs: every differing key, before building anything.
  with pytest.raises(trainer.WorkdirError) as e:
    trainer.train_and_evaluate(other, str(tmp_path))
  msg = str(e.value)
  assert f"the checkpoint in {tmp_path} was written with model.d_model=32, the config asks " \
      "for 64" in msg
  assert "\n" not in msg
  # An older workdir without config.json: the checkpoint's shapes are compared instead,
  # before orbax reads any array.
  (tmp_path / "config.json").unlink()
  with pytest.raises(trainer.WorkdirError, match=r"does not fit the configured model: "
                     r"params\.\S+ is \(\d+, 32\) in the checkpoint, \(\d+, 64\) in the "
                     r"config"):
    trainer.train_and_evaluate(other, str(tmp_path))
  assert not (tmp_path / "config.json").exists()
  # The same model resumes, and config.json is written back for the next start.
  again = trainer.train_and_evaluate(make_config(total_steps=2, schedule__warmup_steps=1),
                                     str(tmp_path))
  assert again["step"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["model"]["d_model"] == 32


def test_model_config_differences():
  saved = {"d_model": 32, "attention": {"mechanism": "softmax", "kwargs": {}}}
  current = {"d_model": 32, "attention": {"mechanism": "sigmoid", "kwargs": {"b": 1}},
             "new_key": 0}
  defaults = {"new_key": 0}
  assert checkpointing.model_config_differences(saved, current, defaults) == [
      ("model.attention.kwargs.b", checkpointing._UNSET, 1),
      ("model.attention.mechanism", "softmax", "sigmoid")]


def test_keep_last_n_and_nothing_to_do(make_config, tmp_path):
  config = make_config(**dict(BASE, checkpoint_every=2, keep_checkpoints=2))
  trainer.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [6, 8]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  again = trainer.train_and_evaluate(config, str(tmp_path))  # already complete
  assert again["step"] == 8
  assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(make_config, tmp_path):
  config = make_config(**dict(BASE, checkpoint_every=2, debug_nan_at_step=5))
  with pytest.raises(trainer.NonFiniteError, match=r"at step 5 .*last good checkpoint is "
                     r"step 4"):
    trainer.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpointing.Checkpointer(tmp_path)
  assert ckpt.all_steps() == [2, 4]
  setup = trainer.Setup(config)
  _, restored = ckpt.restore_latest(setup.abstract_state, None)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))
  records = read_metrics(tmp_path)
  # Strict JSON: NaN is written as null and flagged.
  assert records[-1]["step"] == 5 and records[-1]["train/loss"] is None
  assert "train/loss" in records[-1]["non_finite"]
  line = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
  assert "NaN" not in line and json.loads(line, parse_constant=lambda c: 1 / 0)
  ckpt.close()
