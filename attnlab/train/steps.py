"""Pure train / eval steps over the NNX split form ``(graphdef, params, model_state)``.

The train state is a plain dict of arrays (what orbax saves)::

  {"step": int32 [], "params": {...}, "opt_state": optax state,
   "model_state": {...}}   # non-parameter, non-RNG variables; only if the model has any

RNG streams (dropout) are not part of it: every step rebuilds them from
``(config.seed, step, microbatch, variable path)``, so a restarted run draws the same dropout
masks as an uninterrupted one.

Losses are weighted sums over the whole global batch divided by the total weight (tokens with
``weights > 0`` for LMs, non-padding examples for classification), so ``k`` accumulated
microbatches give the gradient of the one big batch.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Batch = dict[str, jax.Array]
TASK_LM = "lm"
TASK_CLASSIFICATION = "classification"


def task_of(model_cfg: Any) -> str:
  return TASK_CLASSIFICATION if model_cfg.name == "encoder_classifier" else TASK_LM


def split_model(model: nnx.Module):
  """``graphdef, params, rng_state, model_state`` (the last three as pure dicts)."""
  graphdef, params, rngs, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rngs), nnx.to_pure_dict(rest)


def fresh_rngs(template: Any, seed: int, step: Any, micro: Any = 0) -> Any:
  """RNG-state pure dict shaped like `template` whose keys depend only on the arguments."""
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), micro)

  def one(path, leaf):
    dtype = leaf.dtype
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
      name = jax.tree_util.keystr(path).encode()
      key = jax.random.fold_in(base, zlib.crc32(name) & 0x7FFFFFFF)
      if leaf.shape:
        key = jax.random.split(key, leaf.shape)
      return key
    return jnp.zeros(leaf.shape, dtype)

  return jax.tree_util.tree_map_with_path(one, template)


def _model_call(model: nnx.Module, batch: Batch, task: str, deterministic: bool):
  if task == TASK_CLASSIFICATION:
    return model(batch["inputs"], weights=batch["weights"], deterministic=deterministic)
  kwargs = {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
  return model(batch["inputs"], deterministic=deterministic, **kwargs)


def loss_stats(logits: jax.Array, batch: Batch, task: str) -> dict[str, jax.Array]:
  """Weighted sums: ``loss_sum``, ``weight_sum``, ``correct_sum`` (float32 scalars)."""
  logits = logits.astype(jnp.float32)
  if task == TASK_CLASSIFICATION:
    labels = batch["label"].astype(jnp.int32)
    weights = (jnp.sum(batch["weights"], axis=-1) > 0).astype(jnp.float32)
  else:
    labels = batch["targets"].astype(jnp.int32)
    weights = batch["weights"].astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return dict(loss_sum=jnp.sum(nll * weights), weight_sum=jnp.sum(weights),
              correct_sum=jnp.sum(correct * weights))


@dataclasses.dataclass(frozen=True)
class StepBuilder:
  """Builds the pure step functions for one model / optimizer / config."""

  graphdef: Any
  rng_template: Any
  tx: optax.GradientTransformation
  schedule: Callable[[Any], jax.Array]
  task: str
  seed: int = 0
  grad_accum_steps: int = 1
  debug_nan_at_step: int = -1
  micro_constraint: Callable[[Batch], Batch] | None = None

  def forward(self, params, model_state, batch, rngs, deterministic):
    """``(logits, new_model_state, aux_loss)``.

    ``aux_loss`` is the sum of every value a module sowed as ``nnx.Intermediate`` named
    "aux_loss" (e.g. the attention diversification loss of TAP/ADL), float32 scalar; each
    module scales its own term. Capturing also keeps sown values out of the model state.
    """
    model = nnx.merge(self.graphdef, params, rngs, model_state)
    logits, captured = nnx.capture(
        lambda m: _model_call(m, batch, self.task, deterministic), nnx.Intermediate)(model)
    _, _, _, new_state = split_model(model)
    return logits, new_state, sum_aux_losses(captured)

  def init_state(self, params, model_state) -> dict[str, Any]:
    state = dict(step=jnp.zeros((), jnp.int32), params=params,
                 opt_state=self.tx.init(params))
    if jax.tree.leaves(model_state):
      state["model_state"] = model_state
    return state

  def train_step(self, state: dict[str, Any], batch: Batch):
    step = state["step"]
    params = state["params"]
    model_state = state.get("model_state", {})

    def loss_fn(p, ms, mb, micro):
      rngs = fresh_rngs(self.rng_template, self.seed, step, micro)
      logits, new_ms, aux = self.forward(p, ms, mb, rngs, deterministic=False)
      stats = loss_stats(logits, mb, self.task)
      # The objective is normalised by the weight sum later: scale the auxiliary term so that
      # it enters the mean loss exactly once.
      stats["aux_sum"] = aux * stats["weight_sum"]
      stats["loss_sum"] = stats["loss_sum"] + stats["aux_sum"]
      loss_sum = stats["loss_sum"]
      if self.debug_nan_at_step >= 0:  # NaN in the update that produces that step
        loss_sum = loss_sum * jnp.where(step + 1 == self.debug_nan_at_step, jnp.nan, 1.0)
        stats = dict(stats, loss_sum=loss_sum)
      return loss_sum, (stats, new_ms)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = self.grad_accum_steps
    if k == 1:
      (_, (stats, new_ms)), grads = grad_fn(params, model_state, batch, 0)
    else:
      # Row r of the batch goes to microbatch r % k: with the batch split in contiguous
      # blocks over devices, every microbatch stays spread over all devices.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)
      if self.micro_constraint is not None:
        micro = self.micro_constraint(micro)

      def body(carry, xs):
        g_acc, s_acc, ms = carry
        i, mb = xs
        (_, (s, ms)), g = grad_fn(params, ms, mb, i)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s), ms), None

      zeros_s = dict(loss_sum=jnp.float32(0), weight_sum=jnp.float32(0),
                     correct_sum=jnp.float32(0), aux_sum=jnp.float32(0))
      init = (jax.tree.map(jnp.zeros_like, params), zeros_s, model_state)
      (grads, stats, new_ms), _ = jax.lax.scan(body, init, (jnp.arange(k), micro))

    denom = jnp.where(stats["weight_sum"] > 0, stats["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = stats["loss_sum"] / denom
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = self.tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep_if_bad(new, old):  # a non-finite step leaves the state untouched
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    new_state = dict(step=step + 1, params=keep_if_bad(new_params, params),
                     opt_state=keep_if_bad(new_opt, state["opt_state"]))
    if "model_state" in state:
      new_state["model_state"] = keep_if_bad(new_ms, model_state)
    metrics = {
        "train/loss": loss,
        "train/aux_loss": stats["aux_sum"] / denom,
        "train/accuracy": stats["correct_sum"] / denom,
        "train/weight_sum": stats["weight_sum"],
        "train/lr": self.schedule(step),
        "train/grad_norm": grad_norm,
        "finite": finite,
    }
    return new_state, metrics

  def eval_step(self, state: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
    rngs = fresh_rngs(self.rng_template, self.seed, 0, 0)
    logits, _, _ = self.forward(state["params"], state.get("model_state", {}), batch, rngs,
                                deterministic=True)
    return loss_stats(logits, batch, self.task)


def sum_aux_losses(captured: Any) -> jax.Array:
  """Sum of the captured intermediates whose path names "aux_loss" (0.0 if none)."""
  total = jnp.float32(0.0)
  for path, leaf in jax.tree_util.tree_leaves_with_path(captured):
    if "aux_loss" in jax.tree_util.keystr(path):
      total = total + jnp.sum(jnp.asarray(leaf, jnp.float32))
  return total


def all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
