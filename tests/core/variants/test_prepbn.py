"""Progressive RepBN (SLAB, arXiv 2405.11582): the lambda schedule, RepBN and its folding vs
naive formulas (values, gradients through batch statistics), BatchNorm statistics; the
``ProgressiveRepBN`` module (schedule, running statistics, folding) and a model trained the
trainer's way in one compilation; the catalogue entry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.core.variants import prepbn
from attnlab.models import default_model_config
from attnlab.nn.variants import ProgressiveRepBN

from _variant_helpers import B, E, T, check_block_entry, model_of, rnd, tokens  # noqa: I100


# ---------------------------------------------------------------------------------------------
# Pure functions.


def test_prepbn_lambda_schedule():
  lam = lambda s: float(prepbn.prepbn_lambda(s, warmup_steps=2, decay_steps=4))  # noqa: E731
  assert [lam(s) for s in range(0, 8)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
  assert float(prepbn.prepbn_lambda(5, warmup_steps=0, decay_steps=0)) == 0.0


def naive_repbn(x, mean, var, g, b, eta, eps):
  return g * (x - mean) / np.sqrt(var + eps) + b + eta * x


def test_repbn_and_fold_match_naive_with_grads():
  x = rnd(0, (3, 4, 6), 2.0) + 1.0
  mean, var = x.reshape(-1, 6).mean(0), x.reshape(-1, 6).var(0)
  g, b, eta = 1 + rnd(1, (6,), 0.2), rnd(2, (6,), 0.2), 0.7
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  m, v = prepbn.batch_moments(f32(x))
  chex.assert_trees_all_close(m, mean, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(v, var, rtol=1e-4, atol=1e-5)
  got = prepbn.repbn(f32(x), m, v, f32(g), f32(b), eta, eps=1e-5)
  want = naive_repbn(x, mean, var, g, b, eta, 1e-5)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)
  a, c = prepbn.fold_repbn(f32(mean), f32(var), f32(g), f32(b), eta, eps=1e-5)
  chex.assert_trees_all_close(f32(x) * a + c, want, rtol=1e-4, atol=1e-4)
  # Gradients through batch statistics: ours vs a direct jnp transcription.

  def ours(xx, gg):
    mm, vv = prepbn.batch_moments(xx)
    return jnp.sum(jnp.tanh(prepbn.progressive_norm(prepbn.layer_norm(xx, gg, 0.0),
                                                    prepbn.repbn(xx, mm, vv, gg, 0.0, eta),
                                                    0.3)))

  def ref(xx, gg):
    mm = xx.mean((0, 1))
    vv = ((xx - mm) ** 2).mean((0, 1))
    bn = gg * (xx - mm) / jnp.sqrt(vv + 1e-5) + eta * xx
    mu = xx.mean(-1, keepdims=True)
    ln = gg * (xx - mu) / jnp.sqrt(((xx - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
    return jnp.sum(jnp.tanh(0.3 * ln + 0.7 * bn))

  for p, q in zip(jax.grad(ours, (0, 1))(f32(x), f32(g)), jax.grad(ref, (0, 1))(f32(x), f32(g))):
    chex.assert_trees_all_close(p, q, rtol=1e-3, atol=1e-4)


def test_batchnorm_statistics_property():
  """With eta = 0 and identity affine, training-mode BN output has zero mean and unit variance
  per channel over batch and tokens; with lambda = 1 the norm is exactly LayerNorm."""
  x = jnp.asarray(rnd(5, (4, 5, 8), 3.0) + 2.0, jnp.float32)
  m, v = prepbn.batch_moments(x)
  bn = prepbn.repbn(x, m, v, jnp.ones(8), jnp.zeros(8), 0.0, eps=0.0)
  chex.assert_trees_all_close(bn.mean((0, 1)), 0.0, rtol=1e-7, atol=1e-5)
  chex.assert_trees_all_close(bn.var((0, 1)), 1.0, rtol=1e-4)
  ln = prepbn.layer_norm(x, jnp.ones(8), jnp.zeros(8))
  chex.assert_trees_all_equal(prepbn.progressive_norm(ln, bn, 1.0), ln)


# ---------------------------------------------------------------------------------------------
# Catalogue entry and model config.


def test_prepbn_catalogue_entry_and_default_config():
  check_block_entry("prepbn")
  assert set(default_model_config().prepbn.keys()) == {"warmup_steps", "decay_steps",
                                                       "momentum", "eta_init"}



# ---------------------------------------------------------------------------------------------
# Module and model.


def test_prepbn_module_schedule_running_stats_and_folding():
  nm = ProgressiveRepBN(E, warmup_steps=1, decay_steps=2, momentum=0.5, rngs=nnx.Rngs(0))
  nm.bn_scale[...] = 1.0 + 0.1 * jnp.arange(E, dtype=jnp.float32)
  nm.bn_bias[...] = 0.05 * jnp.arange(E, dtype=jnp.float32)
  nm.eta[...] = jnp.float32(0.6)
  mean, var = np.zeros(E), np.ones(E)
  for s in range(4):
    x = jax.random.normal(jax.random.key(s), (B, T, E)) * (1 + s) + s
    lam = [1.0, 1.0, 0.5, 0.0][s]
    xx = np.asarray(x, np.float64)
    bm, bv = xx.reshape(-1, E).mean(0), xx.reshape(-1, E).var(0)
    bn = (np.asarray(nm.bn_scale[...]) * (xx - bm) / np.sqrt(bv + 1e-5)
          + np.asarray(nm.bn_bias[...]) + 0.6 * xx)
    ln = (xx - xx.mean(-1, keepdims=True)) / np.sqrt(xx.var(-1, keepdims=True) + 1e-6)
    chex.assert_trees_all_close(nm(x, deterministic=False), lam * ln + (1 - lam) * bn,
                                rtol=1e-4, atol=1e-4)
    mean, var = 0.5 * mean + 0.5 * bm, 0.5 * var + 0.5 * bv
    chex.assert_trees_all_close(nm.mean[...], mean, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(nm.var[...], var, rtol=1e-5, atol=1e-5)
    assert int(nm.step[...]) == s + 1
    # Eval: running statistics; folding RepBN into a x + c changes nothing.
    ev = nm(x)
    chex.assert_trees_all_close(nm.inference(x), ev, rtol=1e-5, atol=1e-5)
    assert int(nm.step[...]) == s + 1  # evaluation does not advance the schedule
  assert float(nm.lam()) == 0.0
  x = jax.random.normal(jax.random.key(9), (B, T, E))
  a, c = nm.folded()
  # Pure affine at lambda 0.
  chex.assert_trees_all_close(nm(x), x * a + c, rtol=1e-5, atol=1e-5)


def test_prepbn_model_one_compilation_and_state_update():
  m = model_of(norm="layernorm_prepbn", prepbn__decay_steps=2)
  assert isinstance(m.stack.blocks[1].norm2, ProgressiveRepBN)
  assert isinstance(m.final_norm, nnx.LayerNorm)
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  @jax.jit
  def train_like(params, rest, toks):  # the trainer's pattern: pure state in and out
    def loss(p, r):
      mm = nnx.merge(graphdef, p, r)
      out = jnp.mean(mm(toks, deterministic=False) ** 2)
      return out, nnx.to_pure_dict(nnx.split(mm, nnx.Param, ...)[2])
    (val, new_rest), grads = jax.value_and_grad(loss, has_aux=True)(params, rest)
    return val, grads, new_rest

  toks = tokens(3)
  lams = []
  for _ in range(3):
    _, grads, rest = train_like(params, rest, toks)
    lams.append(float(nnx.merge(graphdef, params, rest).stack.blocks[0].norm1.lam()))
  m = nnx.merge(graphdef, params, rest)
  assert train_like._cache_size() == 1
  assert lams == [0.5, 0.0, 0.0]
  assert int(m.stack.blocks[1].norm2.step[...]) == 3
  eta_grad = grads["stack"]["blocks"][0]["norm1"]["eta"]
  assert np.isfinite(eta_grad) and eta_grad != 0.0
