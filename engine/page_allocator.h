// Free list of KV pages. Not thread-safe: owned by the thread that drives the Engine.
#ifndef KVTIER_ENGINE_PAGE_ALLOCATOR_H_
#define KVTIER_ENGINE_PAGE_ALLOCATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvtier::engine {

class PageAllocator {
 public:
  explicit PageAllocator(int num_pages);

  // `n` distinct free pages, or ResourceExhausted (and nothing taken).
  absl::StatusOr<std::vector<int32_t>> Allocate(int n);
  // Returns pages taken from Allocate. Freeing a page twice is a bug (CHECK).
  void Free(absl::Span<const int32_t> pages);
  int free_pages() const { return static_cast<int>(free_.size()); }
  int num_pages() const { return static_cast<int>(in_use_.size()); }

 private:
  std::vector<int32_t> free_;
  std::vector<bool> in_use_;
};

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_PAGE_ALLOCATOR_H_
