#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU: the product as shipped (build/: gcc,
# CUDA when nvcc is there, every binary and benchmark) and its integration tests; then every
# unit and integration test built with AddressSanitizer and UBSan (build-asan/), and each fuzzer
# of that tree for KVTIER_FUZZ_SECONDS seconds (default 10; 0 skips them). The unit tests build
# and run in the sanitizer tree only, to keep CI within its budget. docs/testing.md: what each
# layer checks, and CI's time budget. KVTIER_SANITIZERS=0 runs every test in build/ instead
# and stops there (a quick local check).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${KVTIER_SANITIZERS:-1}" = 0 ]; then
  ./deploy/build.sh
  (cd build && ctest -LE gpu --output-on-failure --timeout 300 -j "$(nproc)")
  exit 0
fi
KVTIER_BUILD_TARGETS=kvtier_no_unit_tests ./deploy/build.sh
(cd build && ctest -L integration --output-on-failure --timeout 300 -j "$(nproc)")

./deploy/build.sh asan
source deploy/sanitizers/env.sh
# Timing bounds of the integration tests are set for the plain tree; under ASan a test that
# misses one gets a second run (a sanitizer report fails both). docs/testing.md.
(cd build-asan && ctest -LE gpu --output-on-failure --timeout 600 --repeat until-pass:2 -j "$(nproc)")
if [ "${KVTIER_FUZZ_SECONDS:-10}" != 0 ]; then
  ./fuzz/run.sh -t "${KVTIER_FUZZ_SECONDS:-10}"
fi
