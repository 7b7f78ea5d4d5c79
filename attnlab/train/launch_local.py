"""Simulate a multi-host run on one machine: N processes over CPU devices, coordinator on
127.0.0.1.

  python -m attnlab.train.launch_local --num_processes 2 --devices_per_process 2 -- \
      --config configs/lm_bytes.py:local --workdir /tmp/attnlab_mp

Every process runs ``python -m attnlab.train <train args> --coordinator_address
127.0.0.1:PORT --num_processes N --process_id i`` with ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=D``, so the job sees ``N * D`` devices in
``N`` processes, exactly as on N hosts (each process loads its own shard of every batch).
Output of process i is prefixed ``[i]``.

When a process exits with a non-zero status (or is killed), the launcher says which one, with
its exit status and the last lines of its output, kills the others at once (they cannot go on
without it: their next collective would wait for it) and exits with that status (128 + the
signal number for a process killed by a signal). The processes run in their own session, so
Ctrl-C (SIGINT), SIGTERM or SIGHUP (a closed terminal) reaches the launcher only, which passes
it on to every process exactly once: the job saves a checkpoint at a step all processes agree
on and stops; a second Ctrl-C is passed on too and makes the processes exit at once; a third
signal kills them (for processes blocked where Python cannot run their signal handlers). The
signal handler only records the signal; the launcher's loop passes it on (within 0.1 s).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

TAIL_LINES = 15


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, devices_per_process: int,
                base: dict[str, str] | None = None) -> dict[str, str]:
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def _pump(stream, prefix: str, sink, tail: collections.deque, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    tail.append(line.rstrip("\n"))
    with lock:
      sink.write(f"{prefix}{line}")
      sink.flush()
  stream.close()


def describe_exit(code: int) -> str:
  """``"exit code 3"`` or ``"killed by SIGKILL"`` for a Popen return code."""
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit code {code}"


def launch(train_args: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
           port: int | None = None, module: str = "attnlab.train",
           timeout: float | None = None, sink=None) -> int:
  """Run `num_processes` copies of ``python -m module train_args``; return the exit code
  (0, the first failing process's status, 128 + signal for a killed one, 124 on timeout)."""
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  sink = sink or sys.stdout
  port = port or free_port()
  lock = threading.Lock()
  procs, pumps, tails = [], [], []
  for i in range(num_processes):
    cmd = [sys.executable, "-m", module, *train_args,
           f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}"]
    p = subprocess.Popen(cmd, env=process_env(i, num_processes, devices_per_process),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    tail = collections.deque(maxlen=TAIL_LINES)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sink, tail, lock),
                         daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
    tails.append(tail)

  def say(text: str) -> None:
    with lock:
      sink.write(f"launch_local: {text}\n")
      sink.flush()

  received: list[int] = []  # appended by the handler, acted on by the loop below
  forwarded = 0

  def record(signum, frame):
    # Only record: the handler runs between two bytecodes of the main thread, which may be
    # holding `lock` (say(), the tail print): taking it here would deadlock.
    del frame
    received.append(signum)

  def forward(signum: int, nth: int) -> None:
    if nth >= 3:  # e.g. processes stuck before their handlers run
      say(f"received a third signal ({signal.Signals(signum).name}); killing every process")
      for p in procs:
        if p.poll() is None:
          p.kill()
      return
    say(f"received {signal.Signals(signum).name}; passing it on to the {num_processes} "
        "processes (a third signal kills them)")
    for p in procs:
      if p.poll() is None:
        try:
          p.send_signal(signum)
        except ProcessLookupError:
          pass

  old = {}
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
      old[sig] = signal.signal(sig, record)
  deadline = None if timeout is None else time.time() + timeout
  code = 0
  try:
    while True:
      while forwarded < len(received):
        forwarded += 1
        forward(received[forwarded - 1], forwarded)
      codes = [p.poll() for p in procs]
      bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if bad:
        i, c = bad[0]
        code = 128 - c if c < 0 else c
        alive = [j for j, p in enumerate(procs) if p.poll() is None]
        pumps[i].join(timeout=2)
        say(f"process {i} (pid {procs[i].pid}) died: {describe_exit(c)}. Its last lines:")
        with lock:
          for line in list(tails[i]):  # a copy: the pump thread may still append
            sink.write(f"  [{i}] {line}\n")
        if alive:
          say(f"killing the other process(es) {alive} now; exiting with status {code}")
        else:
          say(f"exiting with status {code}")
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.time() > deadline:
        code = 124
        say(f"timeout after {timeout}s; killing every process")
        break
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      p.wait()
    for t in pumps:
      t.join(timeout=5)
    for sig, handler in old.items():
      signal.signal(sig, handler)
  return code


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    i = argv.index("--")
    own, train_args = argv[:i], argv[i + 1:]
  else:
    own, train_args = argv, []
  p = argparse.ArgumentParser(prog="python -m attnlab.train.launch_local",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=1,
                 help="CPU devices per process (--xla_force_host_platform_device_count)")
  p.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  p.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
  p.add_argument("--module", default="attnlab.train",
                 help="module each process runs with python -m (default attnlab.train)")
  args = p.parse_args(own)
  for name in ("num_processes", "devices_per_process"):
    if getattr(args, name) < 1:
      print(f"launch_local: error: --{name} must be >= 1, got {getattr(args, name)}",
            file=sys.stderr)
      return 2
  if not train_args:
    p.error("give the train arguments after --, e.g. -- --config configs/lm_bytes.py:local "
            "--workdir /tmp/mp")
  return launch(train_args, num_processes=args.num_processes,
                devices_per_process=args.devices_per_process, port=args.port,
                module=args.module, timeout=args.timeout)


if __name__ == "__main__":
  sys.exit(main())
