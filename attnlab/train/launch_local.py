"""Simulate a multi-host run on one machine: N processes over CPU devices, coordinator on
127.0.0.1.

  python -m attnlab.train.launch_local --num_processes 2 --devices_per_process 2 -- \
      --config configs/lm_bytes.py:local --workdir /tmp/attnlab_mp

Every process runs ``python -m attnlab.train <train args> --coordinator_address
127.0.0.1:PORT --num_processes N --process_id i`` with ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=D``, so the job sees ``N * D`` devices in
``N`` processes, exactly as on N hosts (each process loads its own shard of every batch).
Output of process i is prefixed ``[i]``. The exit status is the first non-zero one of the
processes (the others are stopped), or 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence


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


def _pump(stream, prefix: str, sink) -> None:
  for line in iter(stream.readline, ""):
    sink.write(f"{prefix}{line}")
    sink.flush()
  stream.close()


def launch(train_args: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
           port: int | None = None, module: str = "attnlab.train",
           timeout: float | None = None, sink=None) -> int:
  """Run `num_processes` copies of ``python -m module train_args``; return the exit code."""
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  sink = sink or sys.stdout
  port = port or free_port()
  procs, pumps = [], []
  for i in range(num_processes):
    cmd = [sys.executable, "-m", module, *train_args,
           f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}"]
    p = subprocess.Popen(cmd, env=process_env(i, num_processes, devices_per_process),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sink), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
  deadline = None if timeout is None else time.time() + timeout
  code = 0
  try:
    while True:
      codes = [p.poll() for p in procs]
      bad = [c for c in codes if c not in (None, 0)]
      if bad:
        code = bad[0]
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.time() > deadline:
        code = 124
        sink.write(f"launch_local: timeout after {timeout}s\n")
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for t in pumps:
      t.join(timeout=5)
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
  args = p.parse_args(own)
  if not train_args:
    p.error("give the train arguments after --, e.g. -- --config configs/lm_bytes.py:local "
            "--workdir /tmp/mp")
  return launch(train_args, num_processes=args.num_processes,
                devices_per_process=args.devices_per_process, port=args.port,
                timeout=args.timeout)


if __name__ == "__main__":
  sys.exit(main())
