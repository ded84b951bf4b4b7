// Decode-worker placement by prefix affinity (DESIGN §4 step 4): the router remembers, per
// decode worker, a bounded LRU set of the block keys it sent there, and prefers the worker
// holding the longest prefix of a request's keys (its own first-tier cache likely still has
// them); ties go to the worker with the fewest requests in flight.
//
// Not thread-safe: the router guards it with its own mutex.
#ifndef KVTIER_ROUTER_PLACEMENT_H_
#define KVTIER_ROUTER_PLACEMENT_H_

#include <cstddef>
#include <list>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "common/block_key.h"

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

// The index of the winner: the longest match, then the fewest in flight, then the first.
// -1 when `candidates` is empty.
int PickWorker(absl::Span<const PlacementCandidate> candidates);

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_PLACEMENT_H_
