#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU (labels unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/build.sh
cd build
ctest -LE gpu --output-on-failure --timeout 300 -j "$(nproc)"
