"""Trainer configuration: the base config every experiment starts from, and its validation.

An experiment is one config file (``configs/*.py``) whose ``get_config(arg)`` returns a
``ConfigDict`` built from :func:`base_config` (big_vision style: everything a run needs is in
the config; command-line overrides such as ``--config.total_steps=100`` edit it).

Top-level keys (all required; unknown keys are an error):

  seed                  int, seed of parameter init, dropout and the train-data shuffle
  total_steps           int > 0, optimizer updates of the whole run (schedules use it)
  batch_size            int > 0, global batch (examples per update, all hosts/devices)
  grad_accum_steps      int >= 1, microbatches per update (gradient accumulation)
  data                  ConfigDict, ``attnlab.data`` config (see attnlab/data/pipeline.py)
  model                 ConfigDict, ``attnlab.models`` config (see default_model_config());
                        checked by ``attnlab.models.validate_model_config``
  optimizer             ConfigDict(name, learning_rate, b1, b2, eps, weight_decay,
                        grad_clip_norm, momentum, nesterov); name in OPTIMIZERS
  schedule              ConfigDict(name, warmup_steps, end_lr_fraction, decay_fraction,
                        decay_shape); name in SCHEDULES (see attnlab/train/optim.py);
                        warmup_steps > total_steps is clamped (with a warning) when the
                        schedule is built
  mesh                  ConfigDict(shape, axes): device mesh, -1 = the remaining devices
  logical_axis_rules    list of (logical_name, mesh_axis | (mesh_axes...) | None); the
                        "batch" rule also places the data batch
  log_every             int > 0, steps between console lines / metrics.jsonl records
  eval_every            int >= 0, steps between evals (0 = only at the end; > 0 also
                        evaluates the untrained model at step 0 of a fresh run)
  eval_steps            int, validation batches per eval (<= 0: the whole split)
  eval_batch_size       int >= 0, global eval batch (0 = batch_size)
  checkpoint_every      int >= 0, steps between checkpoints (0 = only at the end)
  keep_checkpoints      int >= 1, checkpoints kept (the newest N)
  async_checkpointing   bool, write checkpoints in a background thread
  restart_from_scratch  bool, when every checkpoint of the workdir is damaged (moved to
                        checkpoints/corrupt/), start again from step 0 instead of stopping
                        with an error
  stop_at_step          int, stop (with a checkpoint) after this step, as if preempted;
                        -1 = never. Schedules still follow total_steps.
  debug_nan_at_step     int, make the loss NaN in the update that produces this step
                        (1-based, as logged; tests the non-finite stop); -1 = never
  peak_flops_per_device float, peak FLOP/s of one device for the MFU estimate; 0 = from
                        the table in attnlab/train/metrics.py

:func:`validate_config` is the one static check of a config (the trainer runs it once at
start-up): the schema of the trainer keys above, ``attnlab.data.resolve_config`` for
``config.data``, one call of ``attnlab.models.validate_model_config`` for ``config.model``
(unknown model keys and mechanism names are its business), and the cross-section check
``model.max_len >= data.seq_len`` of a decoder LM. It needs no JAX devices of its own
(``attention.implementation="auto"`` currently makes ``attnlab.nn`` ask JAX for its default
backend); :func:`validate_runtime` does the checks that need the device count.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict

OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
SCHEDULES = ("constant", "warmup_cosine", "wsd", "linear")
DECAY_SHAPES = ("linear", "sqrt", "cosine")

DEFAULT_MESH_AXES = ("data", "fsdp", "tensor")
# Logical parameter axes (attnlab.nn.partitioning.LOGICAL_AXES) -> mesh axes. With the
# default mesh (-1, 1, 1) everything but the batch is replicated (pure data parallelism);
# give "fsdp" or "tensor" more devices to shard parameters.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("position", None),
    ("classes", None),
)

_OPTIMIZER_KEYS = ("name", "learning_rate", "b1", "b2", "eps", "weight_decay",
                   "grad_clip_norm", "momentum", "nesterov")
_SCHEDULE_KEYS = ("name", "warmup_steps", "end_lr_fraction", "decay_fraction", "decay_shape")
_MESH_KEYS = ("shape", "axes")


def default_model_config() -> ConfigDict:
  from attnlab import models  # pylint: disable=g-import-not-at-top
  return models.default_model_config()


def base_config() -> ConfigDict:
  """Every trainer key at a neutral default; configs/*.py start from this."""
  from attnlab import data  # pylint: disable=g-import-not-at-top
  c = ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32
  c.grad_accum_steps = 1
  c.data = data.default_data_config("bytes")
  c.model = default_model_config()
  c.optimizer = ConfigDict(dict(
      name="adamw", learning_rate=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
      grad_clip_norm=1.0, momentum=0.9, nesterov=False))
  c.schedule = ConfigDict(dict(
      name="warmup_cosine", warmup_steps=100, end_lr_fraction=0.1, decay_fraction=0.2,
      decay_shape="linear"))
  c.mesh = ConfigDict(dict(shape=(-1, 1, 1), axes=DEFAULT_MESH_AXES))
  c.logical_axis_rules = [tuple(r) for r in DEFAULT_LOGICAL_AXIS_RULES]
  c.log_every = 50
  c.eval_every = 200
  c.eval_steps = 20
  c.eval_batch_size = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.restart_from_scratch = False
  c.stop_at_step = -1
  c.debug_nan_at_step = -1
  c.peak_flops_per_device = 0.0
  return c


class ConfigError(ValueError):
  """An invalid trainer config (unknown key, bad value, unknown name); a one-line message."""


def _raise_errors(what: str, errors: list[str]) -> None:
  """Raise one ConfigError holding every problem, on one line ("; "-separated)."""
  if errors:
    raise ConfigError(f"{what}: " + "; ".join(" ".join(e.split()) for e in errors))


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _int(errors: list[str], key: str, value: Any, minimum: int | None = None) -> None:
  if not _is_int(value):
    errors.append(f"config.{key} must be an int, got {value!r}")
  elif minimum is not None and value < minimum:
    errors.append(f"config.{key} must be >= {minimum}, got {value}")


def _num(errors: list[str], key: str, value: Any, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False) -> None:
  if not _is_num(value):
    errors.append(f"config.{key} must be a finite number, got {value!r}")
    return
  if lo is not None and (value < lo or (lo_open and value == lo)):
    errors.append(f"config.{key} must be {'>' if lo_open else '>='} {lo}, got {value}")
  if hi is not None and value > hi:
    errors.append(f"config.{key} must be <= {hi}, got {value}")


def _as_dict(x: Any) -> dict[str, Any]:
  if isinstance(x, ConfigDict):
    return x.to_dict()
  return dict(x)


def _unknown_keys(errors: list[str], section: str, got: dict[str, Any],
                  known: tuple[str, ...]) -> None:
  """Report keys of the flat section ``config.<section>`` that are not in `known`."""
  unknown = sorted(set(got) - set(known))
  if unknown:
    errors.append(f"unknown key(s) {[f'config.{section}.{k}' for k in unknown]}; valid keys "
                  f"under config.{section}: {sorted(known)}")


def validate_config(config: ConfigDict) -> None:
  """The start-up check of a whole config. Raises one ConfigError listing every problem.

  Trainer keys are checked here; ``config.data`` by ``attnlab.data.resolve_config`` and
  ``config.model`` by one call of ``attnlab.models.validate_model_config`` (its
  ValueError/TypeError is reported as ``config.model: <message>``, or as
  ``config.model.<key>=...`` when the message starts with the key). Nothing here needs JAX
  devices, provided ``validate_model_config`` does not ask for the default backend (see
  :func:`validate_runtime` for the checks that need the device count).
  """
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"config must be an ml_collections.ConfigDict, got "
                      f"{type(config).__name__}")
  errors: list[str] = []
  base = _as_dict(_base_schema())
  got = _as_dict(config)
  missing = sorted(set(base) - set(got))
  if missing:
    errors.append(f"missing required key(s) {['config.' + k for k in missing]}")
  unknown = sorted(set(got) - set(base))
  if unknown:
    errors.append(f"unknown key(s) {['config.' + k for k in unknown]}; valid top-level keys: "
                  f"{sorted(base)}")
  _raise_errors("invalid config", errors)

  _int(errors, "seed", config.seed, 0)
  _int(errors, "total_steps", config.total_steps, 1)
  _int(errors, "batch_size", config.batch_size, 1)
  _int(errors, "grad_accum_steps", config.grad_accum_steps, 1)
  _int(errors, "log_every", config.log_every, 1)
  _int(errors, "eval_every", config.eval_every, 0)
  _int(errors, "eval_steps", config.eval_steps)
  _int(errors, "eval_batch_size", config.eval_batch_size, 0)
  _int(errors, "checkpoint_every", config.checkpoint_every, 0)
  _int(errors, "keep_checkpoints", config.keep_checkpoints, 1)
  _int(errors, "stop_at_step", config.stop_at_step, -1)
  _int(errors, "debug_nan_at_step", config.debug_nan_at_step, -1)
  _num(errors, "peak_flops_per_device", config.peak_flops_per_device, 0.0)
  if not isinstance(config.async_checkpointing, bool):
    errors.append(f"config.async_checkpointing must be a bool, got "
                  f"{config.async_checkpointing!r}")
  if not isinstance(config.get("restart_from_scratch", False), bool):
    errors.append(f"config.restart_from_scratch must be a bool, got "
                  f"{config.restart_from_scratch!r}")
  if (_is_int(config.batch_size) and _is_int(config.grad_accum_steps)
      and config.grad_accum_steps >= 1 and config.batch_size % config.grad_accum_steps):
    errors.append(f"config.batch_size={config.batch_size} must be divisible by "
                  f"config.grad_accum_steps={config.grad_accum_steps}")

  # Optimizer.
  opt = _as_dict(config.optimizer)
  _unknown_keys(errors, "optimizer", opt, _OPTIMIZER_KEYS)
  if opt.get("name") not in OPTIMIZERS:
    errors.append(f"config.optimizer.name={opt.get('name')!r} is not a known optimizer; "
                  f"choose one of {list(OPTIMIZERS)}")
  _num(errors, "optimizer.learning_rate", opt.get("learning_rate"), 0.0, lo_open=True)
  _num(errors, "optimizer.b1", opt.get("b1"), 0.0, 1.0)
  _num(errors, "optimizer.b2", opt.get("b2"), 0.0, 1.0)
  _num(errors, "optimizer.eps", opt.get("eps"), 0.0)
  _num(errors, "optimizer.weight_decay", opt.get("weight_decay"), 0.0)
  _num(errors, "optimizer.grad_clip_norm", opt.get("grad_clip_norm"), 0.0)
  _num(errors, "optimizer.momentum", opt.get("momentum"), 0.0, 1.0)

  # Schedule.
  sch = _as_dict(config.schedule)
  _unknown_keys(errors, "schedule", sch, _SCHEDULE_KEYS)
  if sch.get("name") not in SCHEDULES:
    errors.append(f"config.schedule.name={sch.get('name')!r} is not a known schedule; "
                  f"choose one of {list(SCHEDULES)}")
  _int(errors, "schedule.warmup_steps", sch.get("warmup_steps"), 0)
  # warmup_steps > total_steps is not an error: optim.make_schedule clamps it (warning).
  _num(errors, "schedule.end_lr_fraction", sch.get("end_lr_fraction"), 0.0, 1.0)
  _num(errors, "schedule.decay_fraction", sch.get("decay_fraction"), 0.0, 1.0)
  if sch.get("decay_shape") not in DECAY_SHAPES:
    errors.append(f"config.schedule.decay_shape={sch.get('decay_shape')!r} must be one of "
                  f"{list(DECAY_SHAPES)}")

  # Mesh and rules.
  mesh = _as_dict(config.mesh)
  _unknown_keys(errors, "mesh", mesh, _MESH_KEYS)
  shape, axes = mesh.get("shape"), mesh.get("axes")
  if (not isinstance(shape, (tuple, list)) or not shape
      or not all(_is_int(s) and (s >= 1 or s == -1) for s in shape)
      or sum(s == -1 for s in shape) > 1):
    errors.append(f"config.mesh.shape must be a non-empty tuple of positive ints with at "
                  f"most one -1, got {shape!r}")
  if (not isinstance(axes, (tuple, list)) or not all(isinstance(a, str) for a in axes)
      or len(set(axes)) != len(axes)):
    errors.append(f"config.mesh.axes must be a tuple of distinct names, got {axes!r}")
  elif isinstance(shape, (tuple, list)) and len(shape) != len(axes):
    errors.append(f"config.mesh.shape {tuple(shape)} and config.mesh.axes {tuple(axes)} "
                  f"must have the same length")
  rules = config.logical_axis_rules
  if not isinstance(rules, (tuple, list)):
    errors.append(f"config.logical_axis_rules must be a list of (name, mesh_axes) pairs, "
                  f"got {rules!r}")
  else:
    for rule in rules:
      if (not isinstance(rule, (tuple, list)) or len(rule) != 2
          or not isinstance(rule[0], str)):
        errors.append(f"config.logical_axis_rules entries must be (logical_name, mesh_axis | "
                      f"(mesh_axes...) | None), got {rule!r}")
        continue
      targets = () if rule[1] is None else (
          (rule[1],) if isinstance(rule[1], str) else tuple(rule[1]))
      if isinstance(axes, (tuple, list)):
        bad = [a for a in targets if a not in axes]
        if bad:
          errors.append(f"config.logical_axis_rules rule {tuple(rule)!r} names mesh axes "
                        f"{bad} not in config.mesh.axes={tuple(axes)}")

  # Data: attnlab.data checks names, unknown keys and types.
  from attnlab import data as data_lib  # pylint: disable=g-import-not-at-top
  seq_len = None
  try:
    seq_len = data_lib.resolve_config(config.data).seq_len
    _int(errors, "data.seq_len", seq_len, 2)
  except (ValueError, TypeError) as e:
    errors.append(f"config.data: {e}")

  # Model: attnlab.models checks names, unknown keys, types and values (one call).
  from attnlab import models  # pylint: disable=g-import-not-at-top
  try:
    models.validate_model_config(config.model)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    # KeyError/AttributeError: a key the model code reads is missing.
    msg = str(e)
    # "attention.mechanism='x': ..." -> "config.model.attention.mechanism='x': ...".
    sep = "." if re.match(r"[A-Za-z_][\w.\[\]]*[=:]", msg) else ": "
    errors.append(f"config.model{sep}{msg}")
  # The one check that spans two sections.
  model = _as_dict(config.model)
  if (model.get("name") == "decoder_lm" and _is_int(model.get("max_len"))
      and _is_int(seq_len) and model["max_len"] < seq_len):
    errors.append(f"config.model.max_len={model['max_len']} is smaller than "
                  f"config.data.seq_len={seq_len}")
  _raise_errors("invalid config", errors)


def _base_schema() -> ConfigDict:
  c = ConfigDict()
  for k in ("seed", "total_steps", "batch_size", "grad_accum_steps", "data", "model",
            "optimizer", "schedule", "mesh", "logical_axis_rules", "log_every", "eval_every",
            "eval_steps", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
            "async_checkpointing", "restart_from_scratch", "stop_at_step",
            "debug_nan_at_step", "peak_flops_per_device"):
    c[k] = 0
  return c


def resolve_mesh_shape(shape: Any, num_devices: int) -> tuple[int, ...]:
  """Replace the -1 in `shape` by what fills `num_devices`; check the product."""
  shape = tuple(int(s) for s in shape)
  fixed = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % fixed:
      raise ConfigError(f"config.mesh.shape={shape}: {num_devices} devices are not divisible "
                        f"by the fixed axes' product {fixed}")
    shape = tuple(num_devices // fixed if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"config.mesh.shape={shape} needs {math.prod(shape)} devices, but "
                      f"{num_devices} are available (use -1 for one axis to fill them)")
  return shape


def batch_mesh_axes(config: ConfigDict) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over: the "batch" rule (default data, fsdp)."""
  for name, axes in config.logical_axis_rules:
    if name == "batch":
      if axes is None:
        return ()
      return (axes,) if isinstance(axes, str) else tuple(axes)
  return tuple(a for a in ("data", "fsdp") if a in tuple(config.mesh.axes))


def validate_runtime(config: ConfigDict, mesh_shape: dict[str, int], num_processes: int
                     ) -> None:
  """Checks that need the device count: batch divisibility over the batch mesh axes."""
  errors = []
  batch_axes = batch_mesh_axes(config)
  n = math.prod(mesh_shape[a] for a in batch_axes)
  k = config.grad_accum_steps
  if config.batch_size % (n * k):
    errors.append(
        f"config.batch_size={config.batch_size} must be divisible by the batch-parallel "
        f"devices ({n}, mesh axes {batch_axes} of {dict(mesh_shape)}) times "
        f"config.grad_accum_steps={k}, i.e. by {n * k}")
  eval_bs = config.eval_batch_size or config.batch_size
  if eval_bs % n:
    errors.append(f"eval batch size {eval_bs} must be divisible by the batch-parallel "
                  f"devices ({n})")
  for name, bs in (("batch_size", config.batch_size), ("eval batch size", eval_bs)):
    if bs % num_processes:
      errors.append(f"{name} {bs} must be divisible by the number of processes "
                    f"{num_processes}")
  _raise_errors("invalid config for this device set-up", errors)
