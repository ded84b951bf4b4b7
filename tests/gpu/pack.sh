#!/usr/bin/env bash
# Builds kvtier with CUDA here (nvcc, sm_90) and packs what the GPU machine needs into
# .devcarry/kvtier-gpu.tar.xz: the binaries and the shared libraries they load that a stock
# Ubuntu 24.04 + CUDA 13 image lacks (glibc, libstdc++ and CUDA's own libraries stay behind).
# UCX's transport modules go to lib/ucx (run.sh points UCX_MODULE_DIR there).
# Then: device run with carry [".devcarry"] and `bash tests/gpu/run.sh [steps]`.
# KVTIER_PACK_BUILD names another CUDA build directory to pack from (default: build-gpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
./deploy/install-deps.sh
export PATH=/usr/local/cuda/bin:$PATH
build=${KVTIER_PACK_BUILD:-build-gpu}
bins=(kvtier-model kvtier-bench kvtier kvtier-store kvtier-prefill kvtier-decode kvtier-router)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTIER_CUDA=ON \
    -DKVTIER_CUDA_ARCHS=90 >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${bins[@]}" engine_cuda_test
stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib/ucx"
for b in "${bins[@]}"; do cp "$build/bin/$b" "$stage/bin/"; done
cp "$build/tests/engine_cuda_test" "$stage/bin/"
# The store benchmark's anchors (run.sh store), with the UCX and Redis libraries they load.
cp /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/redis-benchmark /usr/bin/ucx_perftest "$stage/bin/"
cp -L /usr/lib/x86_64-linux-gnu/ucx/libuct_cma.so.0 "$stage/lib/ucx/"
strip "$stage"/bin/*
skip='^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux-x86-64|libcuda|libcudart|libcublas|libcublasLt|libnvidia.*)\.so'
for b in "$stage"/bin/*; do
  ldd "$b" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  name=$(basename "$lib")
  [[ "$name" =~ $skip ]] && continue
  cp -L "$lib" "$stage/lib/$name"
done
mkdir -p .devcarry
tar -C "$stage" -cJf .devcarry/kvtier-gpu.tar.xz bin lib
rm -rf "$stage"
ls -la .devcarry/kvtier-gpu.tar.xz
