"""Joining a multi-process job and process barriers that do not depend on collectives.

``initialize(**args)`` wraps ``jax.distributed.initialize`` with time-outs that cover a slow
start (``initialization_timeout``: how long process 0 waits for the others to connect) and a
heartbeat that notices a dead peer. ``barrier(name)`` waits at the coordination service's
barrier (``DistributedRuntimeClient.wait_at_barrier``), not at an XLA collective: on CPU the
first gloo collective gives up after 30 s (``DEADLINE_EXCEEDED: GetKeyValue() timed out``),
and that is too short when one process reads its programs from a warm compilation cache and
another compiles them. The trainer therefore compiles its steps ahead of time and meets the
other processes at :func:`barrier` (time-out :data:`STARTUP_BARRIER_TIMEOUT_S`) before the
first collective runs.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

# Seconds process 0 waits for every process to connect, and the barrier before the first step
# waits for the slowest compilation (a cold cache on a big model takes minutes).
INITIALIZATION_TIMEOUT_S = 900
STARTUP_BARRIER_TIMEOUT_S = int(os.environ.get("ATTNLAB_STARTUP_BARRIER_TIMEOUT_S", "3600"))
# A process that stops sending heartbeats this long is declared dead by the coordinator.
HEARTBEAT_TIMEOUT_S = 100


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
  timeout_ms = int(1000 * (timeout_s or STARTUP_BARRIER_TIMEOUT_S))
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
