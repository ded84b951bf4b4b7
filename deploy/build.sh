#!/usr/bin/env bash
# Installs the build's Debian packages (idempotent) and builds kvtier:
#   deploy/build.sh        build/       (the compiler CMake finds; CUDA when nvcc is there)
#   deploy/build.sh asan   build-asan/  (clang, AddressSanitizer + UBSan, the fuzzers, no CUDA)
#   deploy/build.sh tsan   build-tsan/  (clang, ThreadSanitizer, no CUDA; an instrumented abseil)
# Sanitizer trees are built at -O1 with line tables only, and only what the tests run (target
# kvtier_tests: no benchmarks); docs/testing.md. KVTIER_CMAKE_ARGS adds CMake arguments;
# KVTIER_BUILD_TARGETS builds only those targets.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
dir=build
targets="${KVTIER_BUILD_TARGETS:-}"
args=(-DCMAKE_BUILD_TYPE="${KVTIER_BUILD_TYPE:-RelWithDebInfo}")
case "${1:-}" in
  "") ;;
  asan | tsan)
    dir="build-$1"
    targets="${KVTIER_BUILD_TARGETS:-kvtier_tests}"
    sanitize=thread
    fuzz=OFF
    if [ "$1" = asan ]; then sanitize=address,undefined fuzz=ON; fi
    if [ "$1" = tsan ]; then
      # An abseil that ThreadSanitizer can see (deploy/sanitizers/tsan-abseil.sh).
      ./deploy/sanitizers/tsan-abseil.sh "$dir/abseil-tsan"
      args+=(-DKVTIER_TSAN_LIBS="$(realpath "$dir/abseil-tsan/lib")")
    fi
    args+=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVTIER_CUDA=OFF
      "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only"
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only"
      -DKVTIER_SANITIZE="$sanitize" -DKVTIER_FUZZ="$fuzz")
    ;;
  *)
    echo "usage: deploy/build.sh [asan|tsan]" >&2
    exit 2
    ;;
esac
cmake -S . -B "$dir" -G Ninja "${args[@]}" ${KVTIER_CMAKE_ARGS:-} >/dev/null
cmake --build "$dir" -j "$(nproc)" ${targets:+--target $targets}
