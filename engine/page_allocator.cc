#include "engine/page_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kvtier::engine {

PageAllocator::PageAllocator(int num_pages) : in_use_(num_pages, false) {
  free_.reserve(num_pages);
  // Lowest ids first: pop_back hands out 0, 1, 2, ...
  for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

absl::StatusOr<std::vector<int32_t>> PageAllocator::Allocate(int n) {
  if (n < 0 || n > free_pages()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: asked for ", n, " pages, ", free_pages(), " free"));
  }
  std::vector<int32_t> out(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  std::reverse(out.begin(), out.end());
  for (int32_t p : out) in_use_[p] = true;
  return out;
}

void PageAllocator::Free(absl::Span<const int32_t> pages) {
  for (int32_t p : pages) {
    KVTIER_CHECK(p >= 0 && p < num_pages() && in_use_[p], "freeing page {} not in use", p);
    in_use_[p] = false;
    free_.push_back(p);
  }
}

}  // namespace kvtier::engine
