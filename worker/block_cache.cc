#include "worker/block_cache.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kvtier::worker {

BlockCache::BlockCache(engine::PageAllocator* allocator, BlockEvents* events)
    : allocator_(allocator), events_(events), entries_(allocator->num_pages()) {}

void BlockCache::Ref(int32_t page) {
  Entry& e = entries_[page];
  if (e.refs == 0) lru_.erase(e.lru);
  ++e.refs;
}

std::vector<int32_t> BlockCache::Acquire(absl::Span<const BlockKey> keys) {
  std::vector<int32_t> pages;
  for (const BlockKey& key : keys) {
    auto it = by_key_.find(key);
    if (it == by_key_.end()) break;
    Ref(it->second);
    pages.push_back(it->second);
  }
  stats_.hit_blocks += pages.size();
  return pages;
}

bool BlockCache::Insert(const BlockKey& key, int32_t page) {
  KVTIER_CHECK(page >= 0 && page < static_cast<int32_t>(entries_.size()), "bad page {}", page);
  Entry& e = entries_[page];
  KVTIER_CHECK(!e.cached, "page {} is already cached", page);
  if (!by_key_.emplace(key, page).second) return false;
  e.cached = true;
  e.refs = 1;
  e.key = key;
  ++stats_.inserts;
  if (events_ != nullptr) events_->Stored(key);
  return true;
}

void BlockCache::Release(absl::Span<const int32_t> pages) {
  for (int32_t page : pages) {
    Entry& e = entries_[page];
    if (!e.cached) {
      allocator_->Free(absl::MakeConstSpan(&page, 1));
      continue;
    }
    KVTIER_CHECK(e.refs > 0, "releasing cached page {} with no reference", page);
    if (--e.refs == 0) e.lru = lru_.insert(lru_.end(), page);
  }
}

void BlockCache::Evict(int32_t page) {
  Entry& e = entries_[page];
  lru_.erase(e.lru);
  by_key_.erase(e.key);
  if (events_ != nullptr) events_->Removed(e.key);
  e = Entry();
  allocator_->Free(absl::MakeConstSpan(&page, 1));
  ++stats_.evictions;
}

absl::StatusOr<std::vector<int32_t>> BlockCache::AllocatePages(int n) {
  if (n < 0 || n > available_pages()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: asked for ", n, " pages, ",
                                                     allocator_->free_pages(), " free and ",
                                                     evictable_pages(), " evictable"));
  }
  while (allocator_->free_pages() < n) Evict(lru_.front());
  return allocator_->Allocate(n);
}

void BlockCache::EvictAll() {
  while (!lru_.empty()) Evict(lru_.front());
}

}  // namespace kvtier::worker
