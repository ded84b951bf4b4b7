#!/usr/bin/env bash
# Builds Debian's abseil (the version installed, from its source package) with ThreadSanitizer,
# as shared libraries under the same SONAMEs, into DIR/lib (default build-tsan/abseil-tsan).
# ThreadSanitizer sees no synchronization in uninstrumented code: absl::Mutex, which guards
# most of kvtier's shared state, locks with atomics and futexes inside libabsl_synchronization,
# so against Debian's build every access it orders reads as a race. The TSan tree's programs
# load these libraries instead (an RPATH set by deploy/build.sh tsan); gRPC and the other
# Debian libraries that use abseil load them too. docs/testing.md, "Sanitizer builds".
# Idempotent: a finished DIR is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$(realpath -m "${1:-build-tsan/abseil-tsan}")"
if [ -f "$out/lib/.done" ]; then exit 0; fi
version="$(dpkg-query -W -f='${Version}' libabsl-dev)"
src="$out/src"
mkdir -p "$src"
if [ ! -d "$src/source" ]; then
  # deb-src must be listed for apt-get source.
  if ! apt-get source --print-uris "abseil=$version" >/dev/null 2>&1; then
    sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
    apt-get update -qq
  fi
  (cd "$src" && apt-get source -qq "abseil=$version" >/dev/null)
  mv "$src"/abseil-*/ "$src/source"
fi
cmake -S "$src/source" -B "$out/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_STANDARD=17 \
  -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF \
  "-DCMAKE_CXX_FLAGS=-fsanitize=thread -O1 -gline-tables-only" \
  "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread" ${KVTIER_CMAKE_ARGS:-} >/dev/null
# All of it: a library left uninstrumented hides what it synchronizes (an absl::call_once in
# random_internal_pool_urbg creating LowLevelAlloc's arenas reads as a race in Mutex).
cmake --build "$out/build" -j "$(nproc)"
mkdir -p "$out/lib"
find "$out/build" -name 'libabsl_*.so.*' -exec cp -a {} "$out/lib/" \;
touch "$out/lib/.done"
