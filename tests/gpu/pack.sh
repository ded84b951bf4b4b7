#!/usr/bin/env bash
# Builds kvtier with CUDA here (nvcc, sm_90) and packs what the GPU machine needs into
# .devcarry/kvtier-gpu.tar.xz: the binaries and the shared libraries they load that a stock
# Ubuntu 24.04 + CUDA 13 image lacks (glibc, libstdc++ and CUDA's own libraries stay behind).
# Then: device run with carry [".devcarry"] and `bash tests/gpu/run.sh [bench]`.
set -euo pipefail
cd "$(dirname "$0")/../.."
./deploy/install-deps.sh
export PATH=/usr/local/cuda/bin:$PATH
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTIER_CUDA=ON \
  -DKVTIER_CUDA_ARCHS=90 >/dev/null
cmake --build build-gpu -j "$(nproc)" --target kvtier-model kvtier-bench engine_cuda_test
stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib"
cp build-gpu/bin/kvtier-model build-gpu/bin/kvtier-bench build-gpu/tests/engine_cuda_test \
  "$stage/bin/"
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
