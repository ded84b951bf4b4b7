// kvtier store client: stores and fetches KV blocks in one or more kvtier-store nodes.
//
// Keys are placed on nodes by rendezvous hashing over the configured stores. Control calls go
// over gRPC (one per node per operation); bytes move with UCX one-sided put/get straight
// between the caller's buffers and the store's registered pool (one flush per node per
// batch); a store on the same host is mapped (ucp_rkey_ptr) and copied to directly. Every fetched
// block is checked against its xxh3-64 checksum before it is reported.
//
// Failure model: the cache is an optimisation. A node that is down, restarted or slow costs
// misses (Get/Lookup report a shorter prefix; Put reports blocks as skipped), never an error
// and never wrong bytes. Errors are returned only for bad arguments.
//
// Thread-safety: safe for concurrent use without external synchronization; operations are
// serialized internally (one UCX worker). Use one client per thread for parallel transfers.
#ifndef KVTIER_STORE_CLIENT_H_
#define KVTIER_STORE_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtier/block_key.h"

namespace kvtier {

struct StoreClientOptions {
  // Control-plane addresses of the store nodes, "host:port". At least one.
  std::vector<std::string> stores;
  // Deadline of each control-plane call. Default: 2 s.
  absl::Duration rpc_timeout = absl::Seconds(2);
  // Deadline of each batch of one-sided transfers. Default: 10 s.
  absl::Duration transfer_timeout = absl::Seconds(10);
  // When a store's pool is reachable through shared memory (same host), copy to and from it
  // directly, hashing each chunk while it is in cache (one pass over memory instead of a UCX
  // copy plus a checksum pass). Off: always UCX put/get. Default: true.
  bool map_same_host_pool = true;
  // Threads that copy and hash blocks on that same-host path when a batch is large (one core
  // cannot reach the memory bandwidth); 0: half the cores, at most 8. Default: 0.
  int copy_threads = 0;
  // After a node fails, it is skipped (its keys are misses) for this long. Default: 1 s.
  absl::Duration retry_after = absl::Seconds(1);
};

struct PutResult {
  uint32_t stored = 0;   // written and committed now
  uint32_t present = 0;  // already stored (or being stored by another writer)
  uint32_t skipped = 0;  // not stored: no space, node down, transfer or checksum failure
};

// Blocks of same-host stores read in place (StoreClient::MapPrefix): pinned by leases until
// Unmap, so their bytes neither move nor change meanwhile.
struct MappedPrefix {
  // In this process's address space (a store's pool, mapped), one per block of the prefix.
  std::vector<const uint8_t*> blocks;
  // The xxh3-64 of each block as committed; check before use (VerifyMapped).
  std::vector<uint64_t> checksums;
  // Leading keys stored anywhere (>= blocks.size(): the rest lives in stores that are not
  // mapped, and Get can fetch it).
  size_t stored = 0;
  // Which leases to release: (node index, lease id).
  std::vector<std::pair<size_t, uint64_t>> leases;
};

// A store pool mapped into this process: [base, base + bytes).
struct MappedPool {
  const uint8_t* base = nullptr;
  size_t bytes = 0;
};

// Per-node view, for tools and tests.
struct StoreNodeInfo {
  std::string address;
  bool connected = false;
  uint64_t incarnation = 0;
  uint64_t slot_bytes = 0;
  uint64_t slot_count = 0;
  std::vector<std::string> ucx_memory_types;
  bool cuda_memory_supported = false;
  bool spill_enabled = false;
  std::string ucx_lanes;     // transports of the data-plane endpoint
  bool pool_mapped = false;  // same-host pool copied to directly
};

class StoreClient {
 public:
  // Validates the options and prepares connections; nodes are contacted lazily, so a store
  // that is down at start-up is not an error.
  static absl::StatusOr<std::unique_ptr<StoreClient>> Create(const StoreClientOptions& options);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  // Number of leading `keys` (consecutive blocks of one prefix) stored anywhere. Moves no data.
  absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys);

  // Stores blocks[i] (block_bytes each) under keys[i]. Keys already present are not rewritten.
  absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                absl::Span<const void* const> blocks, size_t block_bytes);

  // Fetches the longest stored prefix of `keys` into buffers[0..n) and returns n. Blocks are
  // pinned only while they are copied, and released before returning.
  absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                             absl::Span<void* const> buffers, size_t block_bytes);

  // Contacts every node (connecting if needed) and reports what it knows.
  std::vector<StoreNodeInfo> Nodes();

  // Same-host zero-copy reads (DESIGN §5): the longest stored prefix of `keys` whose blocks
  // are all in pools mapped into this process, leased and not copied. The caller reads them
  // (e.g. the GPU's copy engine, after registering MappedPools() with CUDA), checks them with
  // VerifyMapped, and must Unmap. Node failures shorten the prefix; errors only for bad
  // arguments. Do not call other methods of this client between MapPrefix and Unmap: a
  // reconnection would unmap the pool.
  absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         size_t block_bytes);
  // Number of leading blocks of `m` whose bytes match their checksums (hashed on up to
  // copy_threads threads). Thread-safe: may run while another thread reads the same blocks.
  size_t VerifyMapped(const MappedPrefix& m, size_t block_bytes) const;
  // Releases the leases of `m` and clears it. Returns false when a lease had expired (or its
  // store could not confirm it): the blocks may have been reused while read, so whatever was
  // read from them must be dropped.
  bool Unmap(MappedPrefix* m);
  // The pools of the stores this client reaches through shared memory (connecting to every
  // available node first). A pool's mapping changes when its store restarts.
  std::vector<MappedPool> MappedPools();

  class Impl;

 private:
  explicit StoreClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier

#endif  // KVTIER_STORE_CLIENT_H_
