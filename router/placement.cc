#include "router/placement.h"

namespace kvtier::router {

void KeyLru::Touch(const BlockKey& key) {
  if (capacity_ == 0) return;
  auto it = index_.find(key);
  if (it != index_.end()) {
    order_.splice(order_.begin(), order_, it->second);
    return;
  }
  order_.push_front(key);
  index_.emplace(key, order_.begin());
  while (index_.size() > capacity_) {
    index_.erase(order_.back());
    order_.pop_back();
  }
}

size_t KeyLru::MatchPrefix(absl::Span<const BlockKey> keys) const {
  size_t n = 0;
  while (n < keys.size() && index_.contains(keys[n])) ++n;
  return n;
}

const std::vector<BlockKey>& PromptKeys::Get(const NamespaceId& ns, uint32_t block_tokens) {
  auto [it, inserted] = keys_.try_emplace({ns, block_tokens});
  if (inserted) it->second = ComputeBlockKeys(TenantNamespace(ns, tenant_), prompt_, block_tokens);
  return it->second;
}

std::vector<BlockKey> PromptKeys::Extend(const NamespaceId& ns, uint32_t block_tokens,
                                         absl::Span<const TokenId> generated) {
  std::vector<BlockKey> keys = Get(ns, block_tokens);
  std::vector<TokenId> tail(prompt_.begin() + keys.size() * block_tokens, prompt_.end());
  tail.insert(tail.end(), generated.begin(), generated.end());
  // The chain goes on from the last key as it starts from the namespace.
  const std::vector<BlockKey> more = ComputeBlockKeys(
      keys.empty() ? TenantNamespace(ns, tenant_) : keys.back(), tail, block_tokens);
  keys.insert(keys.end(), more.begin(), more.end());
  return keys;
}

int PickWorker(absl::Span<const PlacementCandidate> candidates, double load_weight) {
  auto score = [load_weight](const PlacementCandidate& c) {
    return static_cast<double>(c.matched_blocks) - load_weight * c.in_flight;
  };
  int best = -1;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (best < 0) {
      best = static_cast<int>(i);
      continue;
    }
    const PlacementCandidate& c = candidates[i];
    const PlacementCandidate& b = candidates[best];
    if (score(c) > score(b) || (score(c) == score(b) && c.in_flight < b.in_flight)) {
      best = static_cast<int>(i);
    }
  }
  return best;
}

}  // namespace kvtier::router
