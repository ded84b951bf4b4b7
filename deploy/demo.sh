#!/usr/bin/env bash
# The main job, for now: starts a kvtier-store on loopback, stores and fetches the blocks of a
# multi-turn conversation (each turn finds the previous turns cached), restarts the store to
# show the spill tier surviving it, and prints what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/build.sh >/dev/null
BIN=build/bin
WORK=$(mktemp -d /tmp/kvtier-demo.XXXXXX)
STORE_PID=""
cleanup() {
  if [ -n "$STORE_PID" ]; then kill -TERM "$STORE_PID" 2>/dev/null || true; wait "$STORE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

start_store() {
  rm -f "$WORK/ready"
  "$BIN/kvtier-store" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --pool-bytes 256MiB \
    --spill-dir "$WORK/spill" --spill-capacity 2GiB --ready-file "$WORK/ready" \
    >>"$WORK/store.log" 2>&1 &
  STORE_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/ready" ] && break; sleep 0.1; done
  [ -s "$WORK/ready" ] || { echo "store did not start:"; cat "$WORK/store.log"; exit 1; }
  PORT=$(sed -E 's/.*"grpc_port":([0-9]+).*/\1/' "$WORK/ready")
  METRICS=$(sed -E 's/.*"metrics_port":([0-9]+).*/\1/' "$WORK/ready")
  STORE=127.0.0.1:$PORT
}

start_store
echo "== kvtier-store on $STORE (metrics on :$METRICS)"
"$BIN/kvtier" store info --store "$STORE" | head -4
echo
echo "== a 6-turn conversation: each turn fetches the cached history and stores only new blocks"
"$BIN/kvtier" store demo --store "$STORE" --turns 6
echo
echo "== graceful restart (SIGTERM writes memory blocks to RocksDB; the new process rebuilds its index)"
kill -TERM "$STORE_PID"; wait "$STORE_PID" || true; STORE_PID=""
start_store
echo "== the same conversation again, against the restarted store"
"$BIN/kvtier" store demo --store "$STORE" --turns 6
echo
"$BIN/kvtier" store stats --store "$STORE" | grep -E "store|hit_blocks|miss_blocks|promotions|blocks_"
echo
echo "== Prometheus metrics (excerpt)"
curl -s "127.0.0.1:$METRICS/metrics" | grep -E "^kvtier_store_(hit_blocks|miss_blocks|promotions|bytes_in|bytes_out)_total" || true
