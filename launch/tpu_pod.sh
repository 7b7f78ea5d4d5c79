#!/usr/bin/env bash
# Run the same attnlab training on every host of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh NAME ZONE WORKDIR [CONFIG] [-- extra train flags]
#
#   NAME     TPU VM name (gcloud compute tpus tpu-vm create NAME ...)
#   ZONE     its zone, e.g. us-central2-b
#   WORKDIR  output folder every host sees at the same path: a bucket mounted with gcsfuse
#            (e.g. /gcs/my-bucket/attnlab/run1) or an NFS/Filestore mount
#   CONFIG   config file[:arg] relative to the repo (default configs/lm_bytes.py)
#
# Environment:
#   REPO_DIR   where the repo lives on the hosts (default ~/attnlab)
#   SYNC=1     first copy this checkout to every host (gcloud scp) and pip install it
#   PROJECT    gcloud project (default: gcloud's configured one)
#   PYTHON     python on the hosts (default python3)
#
# Every host runs `python -m attnlab.train --multihost ...`; jax.distributed.initialize()
# auto-detects the TPU pod (coordinator, process count and index come from the TPU metadata),
# each host loads its own shard of every batch, and process 0 writes metrics.jsonl / tb.
# Example:
#   launch/tpu_pod.sh my-v4-32 us-central2-b /gcs/bucket/lm configs/lm_bytes.py \
#       -- --config.batch_size=256 --config.mesh.shape='(-1,1,1)'
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,25p' "$0"
  exit 2
fi
NAME=$1; ZONE=$2; WORKDIR=$3; shift 3
CONFIG=configs/lm_bytes.py
if [[ $# -gt 0 && $1 != "--" ]]; then CONFIG=$1; shift; fi
if [[ $# -gt 0 && $1 == "--" ]]; then shift; fi
EXTRA=""
if (( $# )); then EXTRA=$(printf ' %q' "$@"); fi
REPO_DIR=${REPO_DIR:-'~/attnlab'}
PYTHON=${PYTHON:-python3}
PROJECT_FLAG=()
if [[ -n ${PROJECT:-} ]]; then PROJECT_FLAG=(--project "$PROJECT"); fi

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
    --command "$1"
}

if [[ ${SYNC:-0} == 1 ]]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  tarball=$(mktemp /tmp/attnlab.XXXXXX.tar.gz)
  tar -C "$here" --exclude=.git --exclude='*.pyc' -czf "$tarball" .
  gcloud compute tpus tpu-vm scp "$tarball" "$NAME":/tmp/attnlab.tar.gz --zone "$ZONE" \
    "${PROJECT_FLAG[@]}" --worker=all
  ssh_all "mkdir -p $REPO_DIR && tar -C $REPO_DIR -xzf /tmp/attnlab.tar.gz && \
    $PYTHON -m pip install -q -U 'jax[tpu]' && $PYTHON -m pip install -q -e $REPO_DIR"
fi

ssh_all "cd $REPO_DIR && $PYTHON -m attnlab.train --multihost --config $CONFIG \
  --workdir $WORKDIR$EXTRA 2>&1 | tee -a /tmp/attnlab_train.log"
