# Sourced (bash) before running tests or fuzzers of a sanitizer build tree (docs/testing.md,
# "Sanitizer builds"): runtime options of ASan, LSan, UBSan and TSan, and the suppression files
# of this folder. Child processes the tests start (kvtier-store, workers, router) inherit them.
_kvtier_san="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Leaks are checked at exit; undefined behaviour stops the process (the build also passes
# -fno-sanitize-recover), with a stack.
export ASAN_OPTIONS="detect_leaks=1:detect_stack_use_after_return=0:strict_string_checks=1:check_initialization_order=1:abort_on_error=0"
export LSAN_OPTIONS="suppressions=${_kvtier_san}/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=${_kvtier_san}/ubsan.supp"
# TSan: interceptors ignore calls from uninstrumented libraries (gRPC, UCX, RocksDB, OpenSSL
# are Debian's builds, whose own synchronization TSan cannot see); kvtier's code and abseil
# (deploy/sanitizers/tsan-abseil.sh) are instrumented. LLVM's Archer tells TSan about OpenMP's
# barriers and tasks (the CPU engine's kernels); it turns itself off in a process without TSan.
export TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=${_kvtier_san}/tsan.supp"
if [ -f /usr/lib/llvm-14/lib/libarcher.so ]; then
  export OMP_TOOL_LIBRARIES=/usr/lib/llvm-14/lib/libarcher.so
fi
unset _kvtier_san
