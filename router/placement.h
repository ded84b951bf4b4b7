// Decode-worker placement by prefix affinity (docs/serving.md, "Placement"): the router
// remembers, per decode worker, a bounded LRU set of the block keys it sent there, and prefers
// the worker holding the longest prefix of a request's keys (its own first-tier cache likely
// still has them); ties go to the worker with the fewest requests in flight. PromptKeys computes
// a request's keys once per namespace and extends them with the generated tokens.
//
// Value types, not thread-safe: the WorkerPool guards its KeyLrus with its own mutex; a
// PromptKeys belongs to one request.
#ifndef KVTIER_ROUTER_PLACEMENT_H_
#define KVTIER_ROUTER_PLACEMENT_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "kvtier/block_key.h"

namespace kvtier::router {

// A bounded LRU set of block keys.
class KeyLru {
 public:
  explicit KeyLru(size_t capacity) : capacity_(capacity) {}
  // Inserts or refreshes `key`; evicts the least recently used key beyond the capacity.
  void Touch(const BlockKey& key);
  bool Contains(const BlockKey& key) const { return index_.contains(key); }
  size_t size() const { return index_.size(); }
  // How many leading keys of `keys` are in the set.
  size_t MatchPrefix(absl::Span<const BlockKey> keys) const;

 private:
  size_t capacity_;
  std::list<BlockKey> order_;  // most recent first
  absl::flat_hash_map<BlockKey, std::list<BlockKey>::iterator> index_;
};

struct PlacementCandidate {
  size_t matched_blocks = 0;  // leading blocks of the request the worker likely holds
  int in_flight = 0;          // requests the router has running there
};

// The block keys (docs/block-key.md) of one prompt's full blocks, computed on first use for each
// (namespace, block size) and kept for the request's life. The keys of a tenant are chained
// from its namespace (TenantNamespace of the workers'), as the workers chain them.
class PromptKeys {
 public:
  // Borrows `prompt`, which must outlive this.
  explicit PromptKeys(absl::Span<const TokenId> prompt, std::string tenant = "")
      : prompt_(prompt), tenant_(std::move(tenant)) {}

  // The keys of the prompt's full blocks. The reference stays valid for this object's life.
  const std::vector<BlockKey>& Get(const NamespaceId& ns, uint32_t block_tokens);
  // The keys of the full blocks of the prompt followed by `generated`: Get's keys, then the
  // chain continued from the last of them over the prompt's partial block and `generated`.
  std::vector<BlockKey> Extend(const NamespaceId& ns, uint32_t block_tokens,
                               absl::Span<const TokenId> generated);

 private:
  absl::Span<const TokenId> prompt_;
  const std::string tenant_;
  std::map<std::pair<NamespaceId, uint32_t>, std::vector<BlockKey>> keys_;
};

// The index of the winner (docs/serving.md, "Placement"): the highest score, matched blocks
// less `load_weight` per request in flight (a held block saves recomputing or fetching it, a
// request in flight delays this one), then the fewest in flight, then the first. -1 when
// `candidates` is empty.
int PickWorker(absl::Span<const PlacementCandidate> candidates, double load_weight);

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_PLACEMENT_H_
