#!/usr/bin/env bash
# Issue 8 (multi-process start-up): three fresh two-process starts of a tiny MQAR run with a
# warm JAX_COMPILATION_CACHE_DIR (the README recommends one). Before the fix, process 0 loaded
# its programs from the cache, process 1 compiled them, and the first collective's gloo set-up
# timed out after 30 s (2 of 2 starts failed). Prints, per start: the exit status, each
# process's "Setup took" and how long process 0 waited at the start-up barrier; then "k/N".
#
#   scripts/warm_cache_start.sh            # N=3 (RUNS=5 for more); exits 0 iff all succeed
#
# CPU only (JAX_PLATFORMS=cpu, one device per process); about 1-2 min per start on 2 cores.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/attnlab_warm_cache.XXXXXX")
export JAX_COMPILATION_CACHE_DIR="$TMP/cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
ARGS=(--config configs/mqar.py:local --config.total_steps=4 --config.log_every=2
      --config.eval_every=2)

launch() {  # launch WORKDIR LOG
  "$PY" -m attnlab.train.launch_local --num_processes 2 --timeout 600 -- "${ARGS[@]}" \
      --workdir "$1" >"$2" 2>&1
}

echo "warming the cache in $JAX_COMPILATION_CACHE_DIR ..."
if ! launch "$TMP/warm" "$TMP/warm.log"; then
  echo "the warm-up run failed:"; tail -n 30 "$TMP/warm.log"; exit 1
fi
echo "cache: $(find "$JAX_COMPILATION_CACHE_DIR" -type f | wc -l) files"
ok=0
for i in $(seq 1 "$RUNS"); do
  log="$TMP/run$i.log"
  t0=$(date +%s)
  launch "$TMP/run$i" "$log"
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  setup0=$(grep -o '^\[0\] .*Setup took [0-9.]*s' "$log" | grep -o '[0-9.]*s$' | head -1)
  setup1=$(grep -o '^\[1\] .*Setup took [0-9.]*s' "$log" | grep -o '[0-9.]*s$' | head -1)
  waited=$(grep -o '^\[0\] .*waited [0-9.]*s' "$log" | grep -o '[0-9.]*s' | tail -1)
  status=FAIL
  if [ "$rc" -eq 0 ] && ! grep -q DEADLINE_EXCEEDED "$log" \
      && grep -q 'Finished at step 4/4' "$log"; then
    status=ok; ok=$((ok + 1))
  fi
  echo "start $i: $status (exit $rc, ${secs}s wall; Setup took: process 0 ${setup0:-?}," \
       "process 1 ${setup1:-?}; process 0 waited ${waited:-?} at the start-up barrier)"
  [ "$status" = ok ] || tail -n 30 "$log"
done
echo "$ok/$RUNS fresh two-process starts with a warm compilation cache succeeded (logs: $TMP)"
[ "$ok" -eq "$RUNS" ]
