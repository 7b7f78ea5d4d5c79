"""The training loop: ``train_and_evaluate(config, workdir)``.

Per run: validate the config (once; ``validate=False`` when the caller already did, as
``python -m attnlab.train`` does), check the workdir, build the mesh, the data iterators, the
model (abstractly, then its parameters directly in their shardings), the optimizer and the
jitted steps; resume from the newest checkpoint in ``workdir/checkpoints`` if any (after
checking that it was written by the same model: ``config.json``'s model section, then the
checkpoint's array shapes); then train ``total_steps`` updates with periodic logging,
evaluation and checkpoints.

User errors raise :class:`config_lib.ConfigError` (the config) or :class:`WorkdirError` (a
URL or a file as workdir; checkpoints of another model), both with one-line messages.

Workdir layout::

  DIR/config.json        the config of the run's first start (process 0; written atomically,
                         not rewritten on resume; its model section is compared on resume)
  DIR/metrics.jsonl      one JSON record per logged step / eval
  DIR/tb/                TensorBoard events
  DIR/checkpoints/<s>/   orbax checkpoints (state, data_iter, config)

A non-finite loss or gradient norm stops the run with :class:`NonFiniteError`; the update of
that step is discarded inside the step, nothing is saved after it, so the newest checkpoint is
the last good one. ``config.stop_at_step`` or SIGTERM stop early with a checkpoint (a
preemption); the next run with the same workdir resumes and reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from attnlab import data as data_lib
from attnlab.train import checkpointing
from attnlab.train import config_lib
from attnlab.train import metrics as metrics_lib
from attnlab.train import optim
from attnlab.train import sharding as sharding_lib
from attnlab.train import steps as steps_lib

ConfigDict = config_lib.ConfigDict


class NonFiniteError(RuntimeError):
  """The loss or the gradient norm became NaN/inf; training stopped."""


WorkdirError = checkpointing.WorkdirError


def prepare_workdir(workdir: str | Path) -> Path:
  """The absolute workdir, created if missing; :class:`WorkdirError` if it cannot be."""
  if "://" in str(workdir):
    raise WorkdirError(f"workdir must be a local or shared-file-system path, got the URL "
                       f"{str(workdir)!r}; mount the bucket (e.g. gcsfuse at /gcs/<bucket>) "
                       "and pass that path")
  path = Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"workdir {path} is a file, not a directory; pass a directory (new or "
                       "of an earlier run)")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create the workdir {path}: {e.strerror or e}") from e
  return path


def _is_byte_lm(config: ConfigDict) -> bool:
  d = data_lib.resolve_config(config.data)
  return d.name == "bytes" or (d.name == "tfds" and d.tfds_format == "lm")


def _model_config(config: ConfigDict) -> ConfigDict:
  cfg = ConfigDict(config.model.to_dict())
  if cfg.name == "encoder_classifier":
    d = data_lib.resolve_config(config.data)
    if (d.name == "tfds" and d.tfds_format == "classification") or (
        d.name == "mqar_classification"):
      cfg.num_classes = data_lib.num_classes(d)
  return cfg


class Setup:
  """Everything built from a config: mesh, model split form, shardings, jitted steps."""

  def __init__(self, config: ConfigDict, *, mesh: jax.sharding.Mesh | None = None):
    from attnlab import models  # pylint: disable=g-import-not-at-top
    from attnlab.nn import partitioning  # pylint: disable=g-import-not-at-top

    self.config = config
    self.mesh = mesh if mesh is not None else sharding_lib.make_mesh(config)
    config_lib.validate_runtime(config, dict(self.mesh.shape), jax.process_count())
    self.task = steps_lib.task_of(config.model)
    self.vocab_size = data_lib.vocab_size(config.data)
    self.model_cfg = _model_config(config)
    rules = [tuple(r) for r in config.logical_axis_rules]

    def make_model():
      return models.build_model(self.model_cfg, vocab_size=self.vocab_size,
                                rngs=nnx.Rngs(config.seed))

    try:
      abstract_model = nnx.eval_shape(make_model)
    except (ValueError, TypeError) as e:
      # The modules' constructors check their own arguments (values the static config check
      # cannot judge, e.g. a mechanism's hyperparameter): a user error, reported in one line.
      raise config_lib.ConfigError(f"config.model: {e}") from e
    graphdef, abs_params, abs_rngs, abs_rest = nnx.split(
        abstract_model, nnx.Param, nnx.RngState, ...)
    param_shardings = nnx.to_pure_dict(
        partitioning.logical_to_mesh_sharding(abs_params, self.mesh, rules))
    abs_params = nnx.to_pure_dict(abs_params)
    self.graphdef = graphdef
    self.num_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(abs_params)))
    self.tx, self.schedule = optim.make_optimizer(config)

    rep = sharding_lib.replicated(self.mesh)
    micro_constraint = None
    if config.grad_accum_steps > 1:
      def micro_constraint(micro):
        def one(x):
          spec = sharding_lib.batch_spec(config, x.ndim - 1)
          return jax.lax.with_sharding_constraint(
              x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, *spec)))
        return jax.tree.map(one, micro)

    self.builder = steps_lib.StepBuilder(
        graphdef=graphdef, rng_template=nnx.to_pure_dict(abs_rngs), tx=self.tx,
        schedule=self.schedule, task=self.task, seed=int(config.seed),
        grad_accum_steps=int(config.grad_accum_steps),
        debug_nan_at_step=int(config.debug_nan_at_step), micro_constraint=micro_constraint)

    def init_state():
      _, params, _, rest = steps_lib.split_model(make_model())
      return self.builder.init_state(params, rest)

    abstract = jax.eval_shape(init_state)
    opt_shardings = sharding_lib.mirror_param_shardings(
        abstract["opt_state"], abs_params, param_shardings, self.mesh)
    self.state_shardings = dict(step=rep, params=param_shardings, opt_state=opt_shardings)
    if "model_state" in abstract:
      self.state_shardings["model_state"] = jax.tree.map(lambda _: rep,
                                                         abstract["model_state"])
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    self._init_state = jax.jit(init_state, out_shardings=self.state_shardings)
    self.train_step = jax.jit(self.builder.train_step, out_shardings=(self.state_shardings, rep),
                              donate_argnums=(0,))
    self.eval_step = jax.jit(self.builder.eval_step, out_shardings=rep)
    self.all_finite = jax.jit(steps_lib.all_finite, out_shardings=rep)

  def init_state(self) -> dict[str, Any]:
    return self._init_state()

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding_lib.global_batch(self.config, self.mesh, local)

  def flops_per_token(self) -> float:
    m = self.model_cfg
    head_dim = m.get("head_dim") or m.d_model // m.num_heads
    seq_len = data_lib.resolve_config(self.config.data).seq_len
    return metrics_lib.flops_per_token(self.num_params, num_layers=m.num_layers,
                                       num_heads=m.num_heads, head_dim=head_dim,
                                       seq_len=seq_len)


def make_eval_dataset(config: ConfigDict):
  return data_lib.make_dataset(
      config.data, "validation", global_batch_size=config.eval_batch_size or config.batch_size,
      seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count())


def make_train_iterator(config: ConfigDict):
  return iter(data_lib.make_dataset(
      config.data, "train", global_batch_size=config.batch_size, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count()))


def evaluate(setup: Setup, state: dict[str, Any], eval_ds, *, num_batches: int,
             byte_lm: bool) -> dict[str, float]:
  """Weighted loss / accuracy (and bits per byte) over `num_batches` validation batches
  (all of them if <= 0)."""
  sums = None
  for i, local in enumerate(eval_ds):
    if 0 < num_batches <= i:
      break
    s = setup.eval_step(state, setup.global_batch(local))
    sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
  if sums is None:
    return {}
  sums = jax.device_get(sums)
  w = max(float(sums["weight_sum"]), 1e-9)
  out = {"eval/loss": float(sums["loss_sum"]) / w,
         "eval/accuracy": float(sums["correct_sum"]) / w}
  if byte_lm:
    out["eval/bits_per_byte"] = out["eval/loss"] / math.log(2.0)
  return out


class _StopSignal:
  """SIGTERM -> stop at the next step with a checkpoint (single process, main thread only;
  multi-process jobs use JAX's preemption sync point so that all processes stop together)."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      for sig in (signal.SIGTERM,):
        try:
          self._old[sig] = signal.signal(sig, self._handle)
        except (ValueError, OSError):
          pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _reached_preemption(step: int) -> bool:
  if jax.process_count() == 1:
    return False
  try:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except Exception:  # pylint: disable=broad-except  (no preemption service)
    return False


def train_and_evaluate(config: ConfigDict, workdir: str, *, validate: bool = True
                       ) -> dict[str, Any]:
  """Train (resuming from `workdir` if it has checkpoints); return the last metrics.

  Returns a dict with ``step``, ``status`` ("done" | "stopped") and the last logged train
  and eval metrics. Raises :class:`NonFiniteError` on a NaN/inf loss,
  :class:`config_lib.ConfigError` on a bad config (``validate=False`` skips
  ``config_lib.validate_config``, for callers that ran it already) and :class:`WorkdirError`
  on an unusable workdir or checkpoints of a different model.
  """
  if validate:
    config_lib.validate_config(config)
  workdir_path = prepare_workdir(workdir)
  is_main = jax.process_index() == 0

  t0 = time.time()
  ckpt = checkpointing.Checkpointer(workdir_path, keep=config.keep_checkpoints,
                                    async_save=config.async_checkpointing)
  try:
    return _train(config, workdir_path, ckpt, is_main, t0)
  finally:
    ckpt.close()


def _json(x: Any) -> Any:
  return json.loads(x.to_json_best_effort()) if isinstance(x, ConfigDict) else x


def _train(config: ConfigDict, workdir_path: Path, ckpt: checkpointing.Checkpointer,
           is_main: bool, t0: float) -> dict[str, Any]:
  config_json = config.to_json_best_effort(indent=2)
  resuming = ckpt.latest_step() is not None
  have_saved_config = True
  if resuming:  # before building anything: the same model, or a one-line error
    have_saved_config = checkpointing.check_model_config(
        workdir_path, _json(config.model), _json(config_lib.default_model_config()))
  elif is_main:
    checkpointing.write_run_config(workdir_path, config_json)

  setup = Setup(config)
  mesh = setup.mesh
  byte_lm = _is_byte_lm(config) and setup.task == steps_lib.TASK_LM
  seq_len = data_lib.resolve_config(config.data).seq_len
  tokens_per_step = config.batch_size * seq_len
  flops_per_token = setup.flops_per_token()
  peak = metrics_lib.peak_flops_per_device(override=config.peak_flops_per_device)
  peak_total = peak * jax.device_count()
  logging.info("attnlab.train: %d process(es), %d device(s) (%s), mesh %s",
               jax.process_count(), jax.device_count(), jax.devices()[0].device_kind,
               dict(mesh.shape))
  logging.info("Model %s: %s parameters, %s FLOPs/token (6N + attention), peak %.3g FLOP/s "
               "per device", config.model.name, f"{setup.num_params:,}",
               metrics_lib.format_count(flops_per_token), peak)
  for line in sharding_lib.describe(setup.state_shardings["params"],
                                    setup.abstract_state["params"]):
    logging.info("  sharded param %s", line)

  train_iter = make_train_iterator(config)
  eval_ds = make_eval_dataset(config)

  start_step, state = ckpt.restore_latest(setup.abstract_state, train_iter)
  if state is None:
    start_step = 0
    state = setup.init_state()
  else:
    restored = int(jax.device_get(state["step"]))
    if restored != start_step:
      raise RuntimeError(f"checkpoint {start_step} holds step {restored}")
    logging.info("Resumed from step %d", start_step)
    if is_main and not have_saved_config:  # an older workdir: compare next time
      checkpointing.write_run_config(workdir_path, config_json)
  logging.info("Setup took %.1fs", time.time() - t0)

  writer = metrics_lib.MetricsWriter(workdir_path, start_step=start_step)
  total = int(config.total_steps)
  result: dict[str, Any] = {"step": start_step, "status": "done"}
  if start_step >= total:
    logging.info("Nothing to do: step %d >= total_steps %d", start_step, total)
    writer.close()
    return result

  last_saved = start_step if ckpt.latest_step() is not None else None

  def save(step: int):
    nonlocal last_saved
    if last_saved == step:
      return
    if not bool(jax.device_get(setup.all_finite(state["params"]))):
      raise NonFiniteError(f"refusing to save non-finite parameters at step {step}")
    ckpt.save(step, state, train_iter, config_json)
    last_saved = step

  if start_step == 0 and config.eval_every > 0:  # the untrained baseline
    ev = evaluate(setup, state, eval_ds, num_batches=config.eval_steps, byte_lm=byte_lm)
    if ev:
      logging.info("eval step 0: %s", " | ".join(
          f"{k.split('/')[-1]} {v:.4f}" for k, v in ev.items()))
      writer.write(0, ev)

  window: list[dict[str, float]] = []
  window_t0 = None
  window_steps = 0
  recent_step_time = float("nan")
  step = start_step
  stopped = False
  try:
    with _StopSignal() as stop_signal:
      while step < total:
        local = next(train_iter)
        batch = setup.global_batch(local)
        if step == start_step:
          t_compile = time.time()
        state, m = setup.train_step(state, batch)
        m = jax.device_get(m)
        step += 1
        if step == start_step + 1:
          logging.info("First step (incl. compilation) took %.1fs", time.time() - t_compile)
          window_t0 = time.time()
        else:
          window_steps += 1
        if not bool(m.pop("finite")):
          rec = {"train/loss": float(m["train/loss"]),
                 "train/grad_norm": float(m["train/grad_norm"])}
          writer.write(step, rec)
          ckpt.wait()
          good = ckpt.latest_step()
          where = (f"the last good checkpoint is step {good} in {ckpt.directory}" if good
                   is not None else "no checkpoint was saved")
          raise NonFiniteError(
              f"non-finite training loss/gradient at step {step} (loss="
              f"{rec['train/loss']}, grad_norm={rec['train/grad_norm']}); stopping. The "
              f"update was discarded and nothing was saved after it; {where}. Lower "
              f"optimizer.learning_rate, raise schedule.warmup_steps or set "
              f"optimizer.grad_clip_norm.")
        window.append({k: float(v) for k, v in m.items()})

        is_last = step == total
        stop_now = ((config.stop_at_step > 0 and step == config.stop_at_step)
                    or stop_signal.requested or _reached_preemption(step))
        if step % config.log_every == 0 or is_last or stop_now:
          now = time.time()
          rec = _mean(window)
          rec.pop("train/weight_sum", None)
          if byte_lm:
            rec["train/bits_per_byte"] = rec["train/loss"] / math.log(2.0)
          if window_steps > 0 and window_t0 is not None:
            dt = (now - window_t0) / window_steps
            recent_step_time = dt
            rec["perf/step_time_s"] = dt
            rec["perf/tokens_per_sec"] = tokens_per_step / dt
            rec["perf/mfu"] = flops_per_token * tokens_per_step / dt / peak_total
          eta = (total - step) * recent_step_time
          logging.info("%s", metrics_lib.console_line(step, total, rec, eta))
          writer.write(step, rec)
          result.update(rec)
          window, window_t0, window_steps = [], now, 0
        eval_now = is_last or (config.eval_every > 0 and step % config.eval_every == 0)
        if eval_now:
          te = time.time()
          ev = evaluate(setup, state, eval_ds, num_batches=config.eval_steps, byte_lm=byte_lm)
          if ev:
            ev["perf/eval_time_s"] = time.time() - te
            logging.info("eval step %d: %s", step, " | ".join(
                f"{k.split('/')[-1]} {v:.4f}" for k, v in ev.items()))
            writer.write(step, ev)
            result.update(ev)
          if window_t0 is not None:
            window_t0 += time.time() - te  # eval time is not step time
        if is_last or stop_now or (config.checkpoint_every > 0
                                   and step % config.checkpoint_every == 0):
          ts = time.time()
          save(step)
          if window_t0 is not None:
            window_t0 += time.time() - ts
        if stop_now and not is_last:
          logging.info("Stopping at step %d (%s); resume with the same --workdir.", step,
                       "signal" if stop_signal.requested else "stop_at_step")
          stopped = True
          break
  finally:
    ckpt.close()  # waits for the last save
    writer.close()
  result["step"] = step
  result["status"] = "stopped" if stopped else "done"
  logging.info("Finished at step %d/%d in %s (%s).", step, total,
               metrics_lib.format_duration(time.time() - t0), result["status"])
  return result


def _mean(records: list[dict[str, float]]) -> dict[str, float]:
  if not records:
    return {}
  keys = records[0].keys()
  out = {}
  for k in keys:
    if k == "train/lr":
      out[k] = records[-1][k]
    else:
      out[k] = float(np.mean([r[k] for r in records]))
  # Loss/accuracy over the window weighted by each step's weight.
  ws = np.asarray([r.get("train/weight_sum", 1.0) for r in records])
  if ws.sum() > 0:
    for k in ("train/loss", "train/accuracy"):
      out[k] = float(np.sum(ws * np.asarray([r[k] for r in records])) / ws.sum())
  return out
