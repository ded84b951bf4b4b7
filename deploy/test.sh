#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU (labels unit and integration); then the
# same tests built with AddressSanitizer and UBSan (build-asan), and each fuzzer of that tree for
# KVTIER_FUZZ_SECONDS seconds (default 10; 0 skips them). docs/testing.md: what each layer
# checks, and CI's time budget. KVTIER_SANITIZERS=0 stops after the first tree.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/build.sh
(cd build && ctest -LE gpu --output-on-failure --timeout 300 -j "$(nproc)")
if [ "${KVTIER_SANITIZERS:-1}" = 0 ]; then exit 0; fi

./deploy/build.sh asan
source deploy/sanitizers/env.sh
# Timing bounds of the integration tests are set for the plain tree; under ASan a test that
# misses one gets a second run (a sanitizer report fails both). docs/testing.md.
(cd build-asan && ctest -LE gpu --output-on-failure --timeout 600 --repeat until-pass:2 -j "$(nproc)")
if [ "${KVTIER_FUZZ_SECONDS:-10}" != 0 ]; then
  ./fuzz/run.sh -t "${KVTIER_FUZZ_SECONDS:-10}"
fi
