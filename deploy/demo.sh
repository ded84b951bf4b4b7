#!/usr/bin/env bash
# The main job: builds kvtier, starts a local cluster (kvtier-store, a prefill and a decode
# worker, the router, with a generated tiny model on the CPU backend) with `kvtier up`, runs a
# streamed 5-turn chat through the router's OpenAI-compatible endpoint, where each turn finds
# the earlier turns in the cache tier (cached prompt tokens grow), then the same 5 turns with
# the cache off for comparison, and stops the cluster with `kvtier down`.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/build.sh >/dev/null
BIN=build/bin
CONFIG=deploy/local/cluster.yaml
# A run directory of its own (gitignored), so that the demo never touches a cluster the user
# started from .kvtier-run; router port 0 picks a free port.
RUN=.kvtier-run/demo
cleanup() { "$BIN/kvtier" down --config "$CONFIG" --run-dir "$RUN" 2>/dev/null || true; }
trap cleanup EXIT

echo "== kvtier up --config $CONFIG"
URL=$("$BIN/kvtier" up --config "$CONFIG" --run-dir "$RUN" --router-port 0)
echo "endpoint: $URL   (logs and state: $RUN/)"
echo
echo "== a 5-turn conversation, cache on: the prompt grows, the cached part grows with it"
"$BIN/kvtier" chat --url "$URL" --run-dir "$RUN" --turns 5 --max-tokens 32
echo
echo "== the same 5 turns with --no-cache: every prompt token is computed again"
"$BIN/kvtier" chat --url "$URL" --run-dir "$RUN" --turns 5 --max-tokens 32 --no-cache
echo
echo "== kvtier down"
"$BIN/kvtier" down --config "$CONFIG" --run-dir "$RUN"
trap - EXIT
