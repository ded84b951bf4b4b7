#!/usr/bin/env bash
# Installs the build's Debian packages (idempotent) and builds kvtier into build/.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${KVTIER_BUILD_TYPE:-RelWithDebInfo}" \
  ${KVTIER_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$(nproc)"
