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
the last good one (see :func:`_non_finite` for a checkpoint resumed without checksums).
``config.stop_at_step``, SIGTERM or Ctrl-C stop early with a checkpoint at the current step (a
preemption; a second Ctrl-C exits at once); the next run with the same workdir resumes from
the newest checkpoint that verifies (damaged ones are moved to ``checkpoints/corrupt/``, see
:mod:`checkpointing`) and reproduces the uninterrupted run, metrics windows included (the
partial window is saved with each checkpoint). Multi-process runs compile their steps, then
meet at a barrier before the first collective (:mod:`distributed`).
"""

from __future__ import annotations

import json
import math
import os
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
from attnlab.train import distributed
from attnlab.train import metrics as metrics_lib
from attnlab.train import optim
from attnlab.train import sharding as sharding_lib
from attnlab.train import steps as steps_lib

ConfigDict = config_lib.ConfigDict


class NonFiniteError(RuntimeError):
  """The loss or the gradient norm became NaN/inf; training stopped."""


WorkdirError = checkpointing.WorkdirError


class DataError(ValueError):
  """``config.data`` names data that cannot be used (a missing path, an empty folder, only
  binary files, too little text for one sequence); the message is one line."""


def check_workdir(workdir: str | Path) -> Path:
  """The absolute workdir path; :class:`WorkdirError` for a URL or a file (creates nothing)."""
  if "://" in str(workdir):
    raise WorkdirError(f"workdir must be a local or shared-file-system path, got the URL "
                       f"{str(workdir)!r}; mount the bucket (e.g. gcsfuse at /gcs/<bucket>) "
                       "and pass that path")
  path = Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"workdir {path} is a file, not a directory; pass a directory (new or "
                       "of an earlier run)")
  return path


def prepare_workdir(workdir: str | Path) -> Path:
  """The absolute workdir, created if missing; :class:`WorkdirError` if it cannot be."""
  path = check_workdir(workdir)
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
        d.name in ("mqar_classification", "grid_quadrant")):
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


# Set by the command-line entry point (``python -m attnlab.train``): a second Ctrl-C then
# ends the process at once (``os._exit(130)``). Used as a library (a notebook), a second
# Ctrl-C raises KeyboardInterrupt instead and the interpreter lives on.
EXIT_ON_SECOND_INTERRUPT = False


class _StopSignal:
  """SIGINT (Ctrl-C) and SIGTERM -> save a checkpoint after the current step and stop; a
  second SIGINT exits at once (status 130, nothing saved; KeyboardInterrupt outside the
  command line, see :data:`EXIT_ON_SECOND_INTERRUPT`).

  Installed from the main thread only. A single process acts on its own signal. In a
  multi-process job no process may stop alone (the others would wait for it at their next
  collective): JAX's preemption notifier owns SIGTERM (every process then stops at the same
  step, ``reached_preemption_sync_point``) and a SIGINT is turned into a SIGTERM to this
  process so that it takes the same path; without the preemption service the signals keep
  their default action (the process ends; the launcher stops the others).
  """

  def __init__(self):
    self.reason: str | None = None
    self._old = {}
    self._interrupts = 0
    self._direct = jax.process_count() == 1
    self._via_jax = not self._direct and distributed.preemption_service_active()

  def __enter__(self):
    if not self._direct and not self._via_jax:
      logging.warning("Multi-process run without JAX's preemption service: SIGINT/SIGTERM "
                      "end this process without a checkpoint (the processes could not agree "
                      "on a step to stop at).")
      return self
    if threading.current_thread() is threading.main_thread():
      sigs = (signal.SIGINT,) if self._via_jax else (signal.SIGINT, signal.SIGTERM)
      for sig in sigs:
        try:
          self._old[sig] = signal.signal(sig, self._handle)
        except (ValueError, OSError):
          pass
    return self

  @property
  def requested(self) -> bool:
    """Stop after this step (single process only: the signal alone decides; several
    processes stop at JAX's preemption sync point instead)."""
    return self.reason is not None and self._direct

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      self._interrupts += 1
      if self._interrupts > 1:
        if not EXIT_ON_SECOND_INTERRUPT:
          raise KeyboardInterrupt("second Ctrl-C: stopped at once, without saving")
        os.write(2, b"Second Ctrl-C: exiting at once, without saving.\n")
        os._exit(130)  # pylint: disable=protected-access
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    if self.reason is None:
      self.reason = name
    logging.warning("Received %s: saving a checkpoint after the current step, then stopping%s.",
                    name, "; press Ctrl-C again to exit at once without saving"
                    if signum == signal.SIGINT else "")
    if self._via_jax and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notice: all stop together

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


def _open_data(config: ConfigDict):
  """(train iterator, eval dataset); a bad data path is a one-line :class:`DataError`."""
  try:
    return make_train_iterator(config), make_eval_dataset(config)
  except (ValueError, OSError) as e:  # not TypeError: that is a bug, keep its traceback
    text = " ".join(str(e).split()) or type(e).__name__
    raise DataError(f"config.data: {text}") from e


def _make_workdir(workdir: str | Path) -> tuple[Path, bool]:
  """:func:`prepare_workdir`, and whether this process created the folder (on a shared file
  system exactly one process of a job does)."""
  path = check_workdir(workdir)
  try:
    path.mkdir(parents=True, exist_ok=False)
    return path, True
  except FileExistsError:
    return prepare_workdir(path), False
  except OSError as e:
    raise WorkdirError(f"cannot create the workdir {path}: {e.strerror or e}") from e


def _remove_new_workdir(path: Path) -> None:
  """Remove a workdir this process created, if the failed start left it as good as empty:
  nothing in it but an empty ``checkpoints/`` folder. Only empty folders are removed
  (``os.rmdir``), so files another process of the job has written meanwhile stay."""
  if not path.is_dir():
    return
  ckpts = path / checkpointing.CHECKPOINT_DIR
  try:
    if ckpts.is_dir():
      ckpts.rmdir()  # fails if anything is in it
    path.rmdir()
  except OSError:
    pass


def train_and_evaluate(config: ConfigDict, workdir: str, *, validate: bool = True
                       ) -> dict[str, Any]:
  """Train (resuming from `workdir` if it has checkpoints); return the last metrics.

  Returns a dict with ``step``, ``status`` ("done" | "stopped"), ``stop_reason`` (when
  stopped) and the last logged train and eval metrics. Raises :class:`NonFiniteError` on a
  NaN/inf loss, :class:`config_lib.ConfigError` on a bad config (``validate=False`` skips
  ``config_lib.validate_config``, for callers that ran it already), :class:`DataError` on
  unusable data files, :class:`WorkdirError` on an unusable workdir, checkpoints of a
  different model or only damaged checkpoints (``checkpointing.NoUsableCheckpointError``).
  A workdir created by this call is removed again when a user error stops the run before
  its first checkpoint.
  """
  if validate:
    config_lib.validate_config(config)
  check_workdir(workdir)
  train_iter, eval_ds = _open_data(config)  # before the workdir exists: no empty one left
  workdir_path, created = _make_workdir(workdir)
  is_main = jax.process_index() == 0

  t0 = time.time()
  try:
    ckpt = checkpointing.Checkpointer(workdir_path, keep=config.keep_checkpoints,
                                      async_save=config.async_checkpointing)
    try:
      return _train(config, workdir_path, ckpt, is_main, t0, train_iter, eval_ds)
    finally:
      ckpt.close()
  except (config_lib.ConfigError, WorkdirError, DataError):
    if created:
      _remove_new_workdir(workdir_path)
    raise


def _json(x: Any) -> Any:
  return json.loads(x.to_json_best_effort()) if isinstance(x, ConfigDict) else x


def _compile_and_meet(setup: Setup, state: dict[str, Any], batch: dict[str, jax.Array],
                      eval_ds) -> None:
  """Multi-process: compile the steps ahead of time, then wait for every process at a
  coordination-service barrier, so that the first collective never waits for another
  process's compilation (a warm cache on one process, a miss on another)."""
  t = time.time()
  setup.train_step.lower(state, batch).compile()
  for local in eval_ds:
    setup.eval_step.lower(state, setup.global_batch(local)).compile()
    break
  setup.all_finite.lower(state["params"]).compile()
  logging.info("Compiled the steps in %.1fs; waiting for the other processes.",
               time.time() - t)
  distributed.barrier("attnlab_steps_compiled")
  logging.info("All %d processes are ready (waited %.1fs in all).", jax.process_count(),
               time.time() - t)


def _train(config: ConfigDict, workdir_path: Path, ckpt: checkpointing.Checkpointer,
           is_main: bool, t0: float, train_iter, eval_ds) -> dict[str, Any]:
  config_json = config.to_json_best_effort(indent=2)
  resuming = ckpt.latest_step() is not None
  have_saved_config = True
  if resuming:  # before building anything: the same model, or a one-line error
    have_saved_config = checkpointing.check_model_config(
        workdir_path, _json(config.model), _json(config_lib.default_model_config()))

  setup = Setup(config)
  if not resuming and is_main:
    checkpointing.write_run_config(workdir_path, config_json)
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

  try:
    restored = ckpt.restore_newest(setup.abstract_state, train_iter)
  except checkpointing.NoUsableCheckpointError as e:
    if not config.restart_from_scratch:
      raise
    logging.warning("%s; config.restart_from_scratch=True: starting again from step 0.", e)
    restored = None
    train_iter = make_train_iterator(config)  # its position was never restored
  window: list[dict[str, float]] = []
  unverified_step = None  # a resumed checkpoint without checksums
  if restored is None:
    start_step = 0
    state = setup.init_state()
    if resuming and is_main:
      checkpointing.write_run_config(workdir_path, config_json)
  else:
    start_step, state, window = restored.step, restored.state, restored.window
    got = int(jax.device_get(state["step"]))
    if got != start_step:
      raise RuntimeError(f"checkpoint {start_step} holds step {got}")
    if not restored.verified:
      unverified_step = start_step
    logging.info("Resumed from step %d%s", start_step,
                 " (the newest usable checkpoint)" if restored.moved else "")
    if is_main and not have_saved_config:  # an older workdir: compare next time
      checkpointing.write_run_config(workdir_path, config_json)
  logging.info("Setup took %.1fs", time.time() - t0)

  # A fresh start (no checkpoint restored) drops every earlier record, step 0 included.
  writer = metrics_lib.MetricsWriter(workdir_path,
                                     start_step=start_step if restored is not None else -1)
  total = int(config.total_steps)
  result: dict[str, Any] = {"step": start_step, "status": "done"}
  if start_step >= total:
    logging.info("Nothing to do: step %d >= total_steps %d", start_step, total)
    writer.close()
    return result

  last_saved = start_step if restored is not None else None

  def save(step: int):
    nonlocal last_saved
    if last_saved == step:
      return
    if not bool(jax.device_get(setup.all_finite(state["params"]))):
      raise NonFiniteError(f"refusing to save non-finite parameters at step {step}")
    ckpt.save(step, state, train_iter, config_json, window=window)
    last_saved = step

  first_local = next(train_iter)
  if jax.process_count() > 1:
    _compile_and_meet(setup, state, setup.global_batch(first_local), eval_ds)

  if start_step == 0 and config.eval_every > 0:  # the untrained baseline
    ev = evaluate(setup, state, eval_ds, num_batches=config.eval_steps, byte_lm=byte_lm)
    if ev:
      logging.info("eval step 0: %s", " | ".join(
          f"{k.split('/')[-1]} {v:.4f}" for k, v in ev.items()))
      writer.write(0, ev)

  window_t0 = None
  window_steps = 0
  recent_step_time = float("nan")
  step = start_step
  stop_reason = None
  # The handler stays installed until the last save is finished and its checksums written
  # (ckpt.close()): a Ctrl-C there must not reach __main__ as a KeyboardInterrupt.
  with _StopSignal() as stop_signal:
    try:
      while step < total:
        local = first_local if step == start_step else next(train_iter)
        batch = setup.global_batch(local)
        if step == start_step:
          t_compile = time.time()
        state, m = setup.train_step(state, batch)
        m = jax.device_get(m)
        step += 1
        ckpt.poll()
        if step == start_step + 1:
          logging.info("First step (incl. compilation) took %.1fs", time.time() - t_compile)
          window_t0 = time.time()
        else:
          window_steps += 1
        if not bool(m.pop("finite")):
          _non_finite(step, m, writer, ckpt, unverified_step)
        window.append({k: float(v) for k, v in m.items()})

        is_last = step == total
        log_now = step % config.log_every == 0 or is_last
        if config.stop_at_step > 0 and step == config.stop_at_step:
          stop_reason = "stop_at_step"
        elif stop_signal.requested:
          stop_reason = stop_signal.reason
        elif _reached_preemption(step):
          stop_reason = (f"{stop_signal.reason}, as a JAX preemption notice"
                         if stop_signal.reason else
                         "a JAX preemption notice (SIGTERM to a process of the job)")
        stop_now = stop_reason is not None
        if log_now or stop_now:
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
          line = metrics_lib.console_line(step, total, rec, eta)
          if log_now:
            logging.info("%s", line)
            writer.write(step, rec)
            result.update(rec)
            window, window_t0, window_steps = [], now, 0
          else:  # a stop between logged steps: the window continues after the resume
            logging.info("%s (%d step(s) since the last logged step; this window is saved "
                         "with the checkpoint and continues after the resume)", line,
                         len(window))
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
          logging.info("Stopping at step %d (%s); saved a checkpoint at step %d; resume with "
                       "the same --workdir.", step, stop_reason, step)
          break
        stop_reason = None
    finally:
      ckpt.close()  # waits for the last save, writes its checksums
      writer.close()
  result["step"] = step
  result["status"] = "stopped" if stop_reason else "done"
  if stop_reason:
    result["stop_reason"] = stop_reason
  logging.info("Finished at step %d/%d in %s (%s).", step, total,
               metrics_lib.format_duration(time.time() - t0), result["status"])
  return result


def _non_finite(step: int, m: dict[str, Any], writer: metrics_lib.MetricsWriter,
                ckpt: checkpointing.Checkpointer, unverified_step: int | None) -> None:
  """Record the non-finite step, name the last good checkpoint and raise NonFiniteError.

  The last good checkpoint is the newest one whose integrity is known: saved by this run
  (its checksums written) or verified when resumed. A checkpoint resumed *without* checksums
  that training from it turned non-finite before the next checkpoint is suspect (it may be
  damaged): it is moved to ``checkpoints/corrupt/`` so that a rerun resumes from the one
  before it.
  """
  rec = {"train/loss": float(m["train/loss"]), "train/grad_norm": float(m["train/grad_norm"])}
  writer.write(step, rec)
  ckpt.wait()
  good = ckpt.latest_step()
  if good is not None and good == unverified_step:
    ckpt.move_aside(good, f"resumed without checksums, then a non-finite loss at step {step}")
    good = ckpt.latest_step()
  where = (f"the last good checkpoint is step {good} in {ckpt.directory} (a rerun resumes "
           "from it)" if good is not None else "no checkpoint was saved")
  raise NonFiniteError(
      f"non-finite training loss/gradient at step {step} (loss={rec['train/loss']}, "
      f"grad_norm={rec['train/grad_norm']}); stopping. The update was discarded and nothing "
      f"was saved after it; {where}. Lower optimizer.learning_rate, raise "
      "schedule.warmup_steps or set optimizer.grad_clip_norm.")


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
