"""``python -m attnlab.train --config configs/lm_bytes.py[:arg] --workdir DIR [overrides]``.

Overrides edit the config: ``--config.total_steps=100``,
``--config.model.attention.mechanism=sigmoid``, ``--config.optimizer.learning_rate=3e-4``;
an unknown key is an error. Running again with the same ``--workdir`` resumes from its newest
checkpoint (refused if the checkpoint was written by a different model config).

The config is validated once, at start-up (``config_lib.validate_config``; the trainer is
called with ``validate=False``). User errors (an unknown override key or a bad override
value, a missing config file, a config file whose ``get_config`` raises, a bad config, a
workdir that is a file, checkpoints of a different model, unusable data files in
``config.data``, a workdir whose checkpoints are all damaged) print one line ``error: ...`` on
stderr, without a traceback, and exit with status 2; a non-finite loss exits with status 3; a
checkpoint that verified but could not be restored (memory, permissions, I/O; it is not moved
aside) prints one line and exits with status 4.
Ctrl-C or SIGTERM during training saves a checkpoint and exits 0 ("Stopping at step N
(reason)"); a second Ctrl-C exits at once with status 130.

Multi-host: ``--multihost`` calls ``jax.distributed.initialize()`` (auto-detected on Cloud
TPU, Slurm, ...); or give ``--coordinator_address host:port --num_processes N
--process_id i`` (also read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``). See launch/README.md.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_dict
from ml_collections import config_flags
from ml_collections.config_flags import config_path

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/lm_bytes.py or "
    "configs/lm_bytes.py:local.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, tb).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (auto-detects TPU pods, Slurm).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")

flags.mark_flags_as_required(["config", "workdir"])

USER_ERROR_EXIT = 2
NON_FINITE_EXIT = 3
RESTORE_ERROR_EXIT = 4  # a checkpoint that is not damaged could not be restored
INTERRUPTED_EXIT = 130


class UserError(Exception):
  """A mistake on the command line; printed as one ``error:`` line (not a ValueError, so
  that absl's flag parsing does not wrap it)."""


def _one_line(message: Any) -> str:
  return " ".join(str(message).split())


def _fail(message: Any, code: int = USER_ERROR_EXIT) -> NoReturn:
  print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(code)


class _ConfigFileParser(flags.ArgumentParser):
  """``--config`` parser whose failures are one-line :class:`UserError`s (it replaces
  ml_collections' file parser, which keeps a missing file as an error object and wraps
  ``get_config``'s errors in a traceback).

  Loads ``FILE[:ARG]`` (``get_config(ARG)``), locks the config and checks that every
  ``--config.<path>`` override of the command line names an existing key, before
  ml_collections applies the overrides.
  """

  def __init__(self, name: str):
    self.name = name
    self.argv: list[str] | None = None
    self.config: Any = None

  def flag_type(self) -> str:
    return "config object"

  def parse(self, path):
    if isinstance(path, config_dict.ConfigDict):  # set programmatically
      return path
    file, *arg = path.split(":", 1)
    if not os.path.exists(file):
      raise UserError(f"config file {file} does not exist (from --{self.name}={path})")
    if not os.path.isfile(file):
      raise UserError(f"config file {file} is not a file (from --{self.name}={path})")
    try:
      spec = importlib.util.spec_from_file_location(f"{self.name}_config", file)
      module = importlib.util.module_from_spec(spec)
      sys.modules[spec.name] = module  # as an import would (dataclasses need it)
      spec.loader.exec_module(module)
      config = module.get_config(*arg)
    except Exception as e:  # pylint: disable=broad-except  (any error of the user's file)
      raise UserError(f"{path}: {type(e).__name__}: {e}") from e
    if not isinstance(config, config_dict.ConfigDict):
      raise UserError(f"{path}: get_config() returned a {type(config).__name__}, not an "
                      "ml_collections.ConfigDict")
    config.lock()
    self.config = config
    for override, given in _overrides(self.argv if self.argv is not None else sys.argv,
                                      self.name):
      _check_override_path(config, override, given, self.name)
    return config


def _overrides(argv: list[str], name: str) -> list[tuple[str, str]]:
  """``[(path, what was given)]`` for each ``--<name>.<path>[=value]`` in `argv`."""
  argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  out = []
  for i, arg in enumerate(argv):
    if re.match(rf"-{{1,2}}(no)?{re.escape(name)}\.", arg):
      flag = arg.split("=", 1)[0]
      given = arg
      if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        given = f"{arg} {argv[i + 1]}"
      out.append((flag.split(".", 1)[1], given))
  return out


def _check_override_path(config: config_dict.ConfigDict, path: str, given: str,
                         name: str) -> None:
  """Raise UserError naming the key, the argument and the valid keys if `path` is unknown."""
  node, where = config, name
  for part in path.split("."):
    m = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", part)
    if m is None:
      return  # unusual syntax: ml_collections decides
    key, index = m.groups()
    if not isinstance(node, (config_dict.ConfigDict, dict)):
      raise UserError(f"{given}: {where} is {node!r} ({type(node).__name__}), not a section "
                      "with keys")
    if key not in node:
      keys = sorted(node.keys())
      level = "at the top level" if where == name else f"under {where}"
      close = difflib.get_close_matches(key, keys, n=1)
      hint = f"; did you mean {where}.{close[0]}?" if close else ""
      raise UserError(f"unknown config key {where}.{key} (given {given}{hint}); valid keys "
                      f"{level}: {', '.join(keys) or '(none)'}")
    if index:
      return  # an element of a sequence: ml_collections checks the index
    node, where = node[key], f"{where}.{key}"


def _describe_flag_error(error: Exception, parser: _ConfigFileParser) -> str:
  """One line for an absl flag error; names the config key and its type for overrides."""
  message = _one_line(error)
  m = re.match(rf"flag --{parser.name}\.([^=\s]+)=(.*?): (.*)$", message)
  if m is None:
    return message
  path, value, why = m.groups()
  expected = ""
  if parser.config is not None:
    try:
      expected = f" (expected {config_path.get_type(path, parser.config).__name__})"
    except Exception:  # pylint: disable=broad-except  (the type is only a hint)
      expected = ""
  return f"bad value {value!r} for {parser.name}.{path}{expected}: {why}"


def _install_config_parser() -> _ConfigFileParser:
  parser = _ConfigFileParser(_CONFIG.name)
  flags.FLAGS[_CONFIG.name].parser = parser
  return parser


_PARSER = _install_config_parser()


def parse_flags(argv: list[str]) -> list[str]:
  """absl ``flags_parser``: parse `argv`; a bad command line prints one line and exits 2."""
  _PARSER.argv = list(argv)
  try:
    return flags.FLAGS(argv)
  except UserError as e:
    _fail(e)
  except flags.Error as e:
    _fail(_describe_flag_error(e, _PARSER))
  except Exception as e:  # pylint: disable=broad-except  (ml_collections override errors)
    _fail(f"bad command line: {type(e).__name__}: {e}")


def _distributed_args() -> dict | None:
  coordinator = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")

  def env_int(var: str) -> int | None:
    value = os.environ.get(var)
    if not value:
      return None
    try:
      return int(value)
    except ValueError:
      raise UserError(f"{var}={value!r} is not an integer") from None

  num = _NUM_PROCESSES.value
  if num is None:
    num = env_int("JAX_NUM_PROCESSES")
  pid = _PROCESS_ID.value
  if pid is None:
    pid = env_int("JAX_PROCESS_ID")
  explicit = dict(coordinator_address=coordinator, num_processes=num, process_id=pid)
  if _MULTIHOST.value:
    return {k: v for k, v in explicit.items() if v is not None}
  if coordinator and num is not None and pid is not None:
    return explicit
  if num is not None or pid is not None:
    raise UserError("--num_processes/--process_id need --coordinator_address (or "
                    "JAX_COORDINATOR_ADDRESS); or pass --multihost to auto-detect.")
  return None


class _QuietLibraries:
  """absl logging filter: drop INFO chatter of orbax (and jax's backend probing)."""

  _NOISY = ("/orbax/", "/jax/_src/xla_bridge.py")

  def filter(self, record) -> bool:
    if record.levelno > 20 or logging.get_verbosity() > logging.INFO:
      return True
    return not any(p in record.pathname for p in self._NOISY)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; overrides are written --config.KEY=VALUE")
  if logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from attnlab.train import checkpointing  # pylint: disable=g-import-not-at-top
  from attnlab.train import config_lib  # pylint: disable=g-import-not-at-top
  from attnlab.train import distributed  # pylint: disable=g-import-not-at-top
  from attnlab.train import trainer  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    dist = _distributed_args()
    # Checked once, before joining a cluster (validation starts no JAX backend).
    config_lib.validate_config(config)
    if dist is not None:
      distributed.startup_barrier_timeout_s()  # a bad value: one line, before joining
      distributed.initialize(**dist)
    trainer.EXIT_ON_SECOND_INTERRUPT = True
    trainer.train_and_evaluate(config, _WORKDIR.value, validate=False)
  except (UserError, config_lib.ConfigError, trainer.WorkdirError, trainer.DataError,
          distributed.DistributedSetupError) as e:
    _fail(e, USER_ERROR_EXIT)
  except checkpointing.CheckpointRestoreError as e:
    _fail(e, RESTORE_ERROR_EXIT)
  except trainer.NonFiniteError as e:
    _fail(e, NON_FINITE_EXIT)
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (inside it saves and stops)
    _fail("interrupted (Ctrl-C) outside the training loop; no checkpoint was saved for it",
          INTERRUPTED_EXIT)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
