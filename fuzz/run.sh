#!/usr/bin/env bash
# Runs libFuzzer targets of a KVTIER_FUZZ=ON build tree for a bounded time each
# (docs/testing.md, "Fuzzers"):
#   fuzz/run.sh [-t SECONDS] [-b BUILD_DIR] [NAME ...]   (names without _fuzzer; default: all)
# Each starts from its checked-in corpus fuzz/corpus/NAME/ (read only) plus a scratch corpus;
# a crash leaves its input in fuzz/crashes/ and fails the run. Default: 20 s each, build-asan.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=20
build=build-asan
while getopts "t:b:" opt; do
  case "$opt" in
    t) seconds="$OPTARG" ;;
    b) build="$OPTARG" ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
names=("$@")
if [ "${#names[@]}" -eq 0 ]; then
  for c in fuzz/corpus/*/; do names+=("$(basename "$c")"); done
fi
source deploy/sanitizers/env.sh
mkdir -p fuzz/crashes
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for name in "${names[@]}"; do
  mkdir -p "$scratch/$name"
  echo "fuzz: $name for ${seconds}s"
  if ! "$build/fuzz/${name}_fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="fuzz/crashes/${name}-" \
      "$scratch/$name" "fuzz/corpus/$name" >"$scratch/$name.log" 2>&1; then
    tail -n 60 "$scratch/$name.log"
    failed+=("$name")
  else
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$scratch/$name.log" | tail -n 2 || true
  fi
done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/crashes/)" >&2
  exit 1
fi
