#!/usr/bin/env bash
# Simulate a multi-host run on this machine: N processes over CPU devices, coordinator on
# 127.0.0.1 (a thin wrapper over `python -m attnlab.train.launch_local`).
#
#   launch/local_multiprocess.sh [N] [DEVICES_PER_PROCESS] -- <train flags>
#   launch/local_multiprocess.sh 2 2 -- --config configs/lm_bytes.py:local --workdir /tmp/mp
#
# Each process gets --coordinator_address=127.0.0.1:<free port> --num_processes=N
# --process_id=i, JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=D.
# If a process dies, the launcher names it (exit status, last log lines), kills the others and
# exits non-zero; Ctrl-C is passed on once to every process (checkpoint, then stop).
set -euo pipefail
N=2; D=1
if [[ $# -gt 0 && $1 != "--" ]]; then N=$1; shift; fi
if [[ $# -gt 0 && $1 != "--" ]]; then D=$1; shift; fi
if [[ $# -gt 0 && $1 == "--" ]]; then shift; fi
if [[ $# -eq 0 ]]; then
  sed -n '2,11p' "$0"
  exit 2
fi
exec "${PYTHON:-python}" -m attnlab.train.launch_local --num_processes "$N" \
  --devices_per_process "$D" -- "$@"
