// ParallelFor: a loop spread over a few short-lived threads, for memory-bound work on large
// buffers (copying and hashing blocks) where one core cannot reach the memory bandwidth.
// Thread-safe; `fn` must be safe to call concurrently for different indices.
#ifndef KVTIER_COMMON_PARALLEL_H_
#define KVTIER_COMMON_PARALLEL_H_

#include <cstddef>
#include <functional>

namespace kvtier {

// Calls fn(i) once for each i in [0, n), on min(threads, n) threads (the caller's included;
// threads <= 1 runs inline). Indices are handed out one at a time, so uneven items balance.
// Returns after every call has returned.
void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn);

}  // namespace kvtier

#endif  // KVTIER_COMMON_PARALLEL_H_
