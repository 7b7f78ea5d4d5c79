"""Joining a multi-process job and process barriers that do not depend on collectives.

``initialize(**args)`` wraps ``jax.distributed.initialize`` with time-outs that cover a slow
start (``initialization_timeout``: how long process 0 waits for the others to connect) and a
heartbeat that notices a dead peer. ``barrier(name)`` waits at the coordination service's
barrier (``DistributedRuntimeClient.wait_at_barrier``), not at an XLA collective: on CPU the
first gloo collective gives up after 30 s (``DEADLINE_EXCEEDED: GetKeyValue() timed out``),
and that is too short when one process reads its programs from a warm compilation cache and
another compiles them. The trainer therefore compiles its steps ahead of time and meets the
other processes at :func:`barrier` (time-out :func:`startup_barrier_timeout_s`) before the
first collective runs.

:func:`broadcast_text` and :func:`gather_text` share short strings between processes through
the coordination service's key-value store (checkpoint verdicts; see :mod:`checkpointing`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

# Seconds process 0 waits for every process to connect, and the barrier before the first step
# waits for the slowest compilation (a cold cache on a big model takes minutes; the default
# of startup_barrier_timeout_s, overridden by $ATTNLAB_STARTUP_BARRIER_TIMEOUT_S).
INITIALIZATION_TIMEOUT_S = 900
STARTUP_BARRIER_TIMEOUT_S = 3600
STARTUP_BARRIER_ENV = "ATTNLAB_STARTUP_BARRIER_TIMEOUT_S"
# A process that stops sending heartbeats this long is declared dead by the coordinator.
HEARTBEAT_TIMEOUT_S = 100


class DistributedSetupError(ValueError):
  """A bad attnlab environment setting for multi-process runs; the message is one line."""


def startup_barrier_timeout_s() -> float:
  """Seconds the barrier before the first step waits: ``$ATTNLAB_STARTUP_BARRIER_TIMEOUT_S``
  (a positive number) or :data:`STARTUP_BARRIER_TIMEOUT_S`; read when called, so a bad value
  is a one-line :class:`DistributedSetupError` naming the variable, not an import error."""
  raw = os.environ.get(STARTUP_BARRIER_ENV, "").strip()
  if not raw:
    return float(STARTUP_BARRIER_TIMEOUT_S)
  try:
    value = float(raw)
  except ValueError:
    value = float("nan")
  if not value > 0 or value == float("inf"):
    raise DistributedSetupError(
        f"{STARTUP_BARRIER_ENV}={raw!r} is not a positive number of seconds (unset it for "
        f"the default {STARTUP_BARRIER_TIMEOUT_S})")
  return value


def initialize(**args: Any) -> None:
  """``jax.distributed.initialize(**args)`` with attnlab's time-outs (explicit args win)."""
  args.setdefault("initialization_timeout", INITIALIZATION_TIMEOUT_S)
  args.setdefault("heartbeat_timeout_seconds", HEARTBEAT_TIMEOUT_S)
  logging.info("jax.distributed.initialize(%s)", args)
  jax.distributed.initialize(**args)


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def barrier(name: str, timeout_s: float | None = None) -> None:
  """Wait until every process reaches barrier `name` (unique per use); no-op alone.

  Uses the coordination service (a key-value RPC), not a device collective, so a long wait
  (another process still compiling) cannot trip the collectives' own time-outs.
  """
  if jax.process_count() == 1:
    return
  client = _client()
  timeout_ms = int(1000 * (timeout_s or startup_barrier_timeout_s()))
  if client is None:  # not started through jax.distributed: fall back to a collective
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, timeout_ms)


def preemption_service_active() -> bool:
  """Whether JAX's preemption notifier (SIGTERM -> a step all processes stop at) runs."""
  if jax.process_count() == 1:
    return False
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.preemption_sync_manager is not None


def broadcast_text(name: str, text: str | None, timeout_s: float = 600) -> str:
  """Process 0's `text` on every process (the others pass None); `name` unique per use.

  One process: `text` itself. Uses the coordination service's key-value store (a collective
  over the devices when the job was not started through ``jax.distributed``)."""
  if jax.process_count() == 1:
    assert text is not None
    return text
  key = f"attnlab/broadcast/{name}"
  client = _client()
  if client is None:
    return _gather_by_collective(text or "")[0]
  if jax.process_index() == 0:
    client.key_value_set(key, text)
    return text
  return client.blocking_key_value_get(key, int(1000 * timeout_s))


def gather_text(name: str, text: str, timeout_s: float = 600) -> list[str]:
  """Every process's `text`, by process index, on every process (waits for all of them:
  a barrier); `name` unique per use."""
  if jax.process_count() == 1:
    return [text]
  client = _client()
  if client is None:
    return _gather_by_collective(text)
  prefix = f"attnlab/gather/{name}"
  client.key_value_set(f"{prefix}/{jax.process_index()}", text)
  return [client.blocking_key_value_get(f"{prefix}/{i}", int(1000 * timeout_s))
          for i in range(jax.process_count())]


_GATHER_BYTES = 2048


def _gather_by_collective(text: str) -> list[str]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  raw = text.encode()[:_GATHER_BYTES]
  buf = np.zeros(_GATHER_BYTES + 4, np.uint8)
  buf[:4] = np.frombuffer(np.uint32(len(raw)).tobytes(), np.uint8)
  buf[4:4 + len(raw)] = np.frombuffer(raw, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(buf))
  out = []
  for row in rows.reshape(jax.process_count(), -1):
    n = int(np.frombuffer(row[:4].tobytes(), np.uint32)[0])
    out.append(row[4:4 + n].tobytes().decode(errors="replace"))
  return out
