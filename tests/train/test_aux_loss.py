"""Auxiliary losses sown by modules ("aux_loss" intermediates) enter the training objective."""

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn.attention import MultiHeadAttention, register_attention_module
from attnlab.train import sharding as sharding_lib
from attnlab.train import trainer

AUX = 0.25


class _SowsConstant(MultiHeadAttention):
  """Softmax attention that sows a constant auxiliary loss (test-only mechanism)."""
  core_mechanism = "softmax"

  def __call__(self, x, **kwargs):
    self.sow(nnx.Intermediate, "aux_loss", jnp.float32(AUX))
    return super().__call__(x, **kwargs)


register_attention_module("test_sows_aux_loss", _SowsConstant, overwrite=True)


def test_train_loss_is_cross_entropy_plus_sown_terms(make_config):
  config = make_config(model__attention__mechanism="test_sows_aux_loss", model__num_layers=2,
                       mesh__shape=(1, 1, 1))
  setup = trainer.Setup(config, mesh=sharding_lib.make_mesh(config, jax.devices()[:1]))
  batch = setup.global_batch(next(trainer.make_train_iterator(config)))
  state = setup.init_state()
  # Cross-entropy of the same parameters from the eval step (which adds no auxiliary term).
  stats = setup.eval_step(state, batch)
  ce = float(stats["loss_sum"]) / float(stats["weight_sum"])
  _, metrics = setup.train_step(state, batch)
  # Two layers each sow AUX once per forward pass.
  chex.assert_trees_all_close(float(metrics["train/aux_loss"]), 2 * AUX, rtol=1e-6)
  chex.assert_trees_all_close(float(metrics["train/loss"]), ce + 2 * AUX, rtol=1e-5)
