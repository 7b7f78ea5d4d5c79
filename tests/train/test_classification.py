"""The encoder-classifier path: per-example loss / accuracy, padding examples ignored."""

import numpy as np

from attnlab.train import trainer


def test_encoder_classifier_steps(make_config):
  config = make_config(model__name="encoder_classifier", model__num_classes=3,
                       schedule__warmup_steps=0, schedule__name="constant")
  setup = trainer.Setup(config)
  assert setup.task == "classification"
  rng = np.random.default_rng(0)
  b, t = config.batch_size, config.data.seq_len
  inputs = rng.integers(2, 64, size=(b, t)).astype(np.int32)
  weights = np.ones((b, t), np.float32)
  weights[:, t // 2:] = 0.0  # right padding
  weights[-2:] = 0.0  # two all-padding examples (eval padding): must not count
  batch = {"inputs": inputs, "label": (inputs[:, 0] % 3).astype(np.int32),
           "weights": weights}
  gb = setup.global_batch(batch)
  state = setup.init_state()
  stats = setup.eval_step(state, gb)
  assert float(stats["weight_sum"]) == b - 2
  losses = []
  for _ in range(8):
    state, m = setup.train_step(state, gb)
    losses.append(float(m["train/loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  after = setup.eval_step(state, gb)
  assert 0.0 <= float(after["correct_sum"]) <= b - 2
