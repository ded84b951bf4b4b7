// kvtier store client: stores and fetches KV blocks in one or more kvtier-store nodes
// (docs/store-protocol.md).
//
// StoreClient is an interface (as LevelDB's DB): StoreClient::Create makes the real client, and
// tests of the layers above it use an in-memory fake (cachestore/fake_store_client.h). The real
// client places keys on nodes by rendezvous hashing over the configured stores. Control calls go
// over gRPC (one per node per operation); bytes move with UCX one-sided put/get straight between
// the caller's buffers and the store's registered pool (one flush per node per batch); a store
// on the same host is mapped (ucp_rkey_ptr) and copied to directly. Every fetched block is
// checked against its xxh3-64 checksum before it is reported.
//
// Failure model: the cache is an optimisation. A node that is down, restarted or slow costs
// misses (Get/Lookup report a shorter prefix; Put reports blocks as skipped), never an error
// and never wrong bytes. Errors are returned only for bad arguments. Every call is bounded:
// control calls by rpc_timeout, each batch of transfers by transfer_timeout, after which the
// data-plane endpoint is force-closed and the node skipped for retry_after
// (docs/store-protocol.md, "Failure model").
//
// Ownership: a MappedPrefix borrows the client that made it, which must outlive it.
// Thread-safety: a StoreClient is safe for concurrent use without external synchronization;
// the real client serializes its calls internally (the nodes of one call work in parallel), so
// use one client per thread for parallel calls. MappedPrefix: see its comment.
#ifndef KVTIER_STORE_CLIENT_H_
#define KVTIER_STORE_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtier/block_key.h"
#include "kvtier/tls_options.h"

namespace kvtier {

struct StoreClientOptions {
  // Control-plane addresses of the store nodes, "host:port". At least one. Default: none.
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
  // Data-plane lanes per store node: UCX endpoints, each on a UCX worker of its own (over TCP,
  // a connection of its own), over which the blocks of one batch are spread and moved (and
  // hashed) in parallel. A pool mapped on the same host uses one. 1 to 16
  // (docs/store-protocol.md, "Lanes"). Default: 1.
  int lanes = 1;
  // After a node fails, it is skipped (its keys are misses) for this long. Default: 1 s.
  absl::Duration retry_after = absl::Seconds(1);
  // The data plane's network interface: a name ("eth1"), an address of one, or "all" (UCX
  // listens on and connects from it; docs/store-protocol.md, "Data plane: interfaces and
  // trust"). Empty: the interfaces this host reaches the stores through (loopback for stores
  // on 127.0.0.1). Default: empty.
  std::string data_interface;
  // How the control plane is reached: TLS verifying the stores' certificates with
  // tls.ca_file (presenting tls.client_cert_file to stores that require one) and the service
  // token on every call, or plain text (tls.plaintext). Create fails when neither is
  // configured (docs/security.md). Default: neither.
  TlsOptions tls;
};

struct PutResult {
  uint32_t stored = 0;   // written and committed now
  uint32_t present = 0;  // already stored (committed)
  // Not stored: no space, node down, transfer or checksum failure, or being stored by another
  // writer (which may still fail).
  uint32_t skipped = 0;
  // Of `stored`, written through a pool mapped into this process (a same-host store); the rest
  // moved over UCX.
  uint32_t stored_mapped = 0;
};

// A store pool mapped into this process: [base, base + bytes). A restarted store's new pool
// may be mapped at the same address: `incarnation` (the store process's, from GetInfo) tells
// the pools apart.
struct MappedPool {
  const uint8_t* base = nullptr;
  size_t bytes = 0;
  uint64_t incarnation = 0;
  bool operator==(const MappedPool&) const = default;
};

// The parents of consecutive blocks of one prefix, for StoreClient::Put: {prev, keys[0], ...,
// keys[n-2]}, where `prev` is the key before keys[0] (the namespace id for a first block).
inline std::vector<BlockKey> ChainParents(const BlockKey& prev, absl::Span<const BlockKey> keys) {
  std::vector<BlockKey> out;
  out.reserve(keys.size());
  if (!keys.empty()) out.push_back(prev);
  for (size_t i = 0; i + 1 < keys.size(); ++i) out.push_back(keys[i]);
  return out;
}

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

// Blocks of same-host stores read in place (StoreClient::MapPrefix), pinned by leases while the
// handle holds them, so their bytes neither move nor change meanwhile (as RocksDB's
// PinnableSlice pins a block). The leases are released by Release() or, at the latest, by the
// destructor. Move-only.
//
// Thread-safety: the accessors and Verify() may run on several threads at once (e.g. one
// thread imports the blocks while another verifies them); Release(), assignment and
// destruction need exclusive access.
class MappedPrefix {
 public:
  // Releases the leases; returns whether every one was still held.
  using ReleaseFn = absl::AnyInvocable<bool()>;

  // An empty prefix: nothing leased.
  MappedPrefix() = default;
  // For StoreClient implementations: blocks[i] (block_bytes each) was committed with checksum
  // checksums[i]; `stored` leading keys are stored anywhere (>= blocks.size()); Verify hashes on
  // up to `verify_threads` threads; `release` (may be empty: nothing leased) is called once.
  MappedPrefix(std::vector<const uint8_t*> blocks, std::vector<uint64_t> checksums, size_t stored,
               size_t block_bytes, int verify_threads, ReleaseFn release);
  ~MappedPrefix();  // Release()s
  MappedPrefix(MappedPrefix&& other) noexcept;
  MappedPrefix& operator=(MappedPrefix&& other) noexcept;
  MappedPrefix(const MappedPrefix&) = delete;
  MappedPrefix& operator=(const MappedPrefix&) = delete;

  // In this process's address space (a store's pool, mapped), one per block of the prefix.
  absl::Span<const uint8_t* const> blocks() const { return blocks_; }
  size_t size() const { return blocks_.size(); }
  // Leading keys stored anywhere (>= size(): the rest lives in stores that are not mapped, and
  // StoreClient::Get can fetch it).
  size_t stored() const { return stored_; }

  // Number of leading blocks of [first, first + count) (clamped to size()) whose bytes match
  // their checksums. Check after reading the bytes (docs/store-protocol.md, "Late writes").
  size_t Verify(size_t first = 0, size_t count = SIZE_MAX) const;
  // Releases the leases and empties the handle. Returns false when a lease had expired (or its
  // store could not confirm it): the blocks may have been reused while read, so whatever was
  // read from them must be dropped. True for an empty handle.
  bool Release();

 private:
  std::vector<const uint8_t*> blocks_;
  std::vector<uint64_t> checksums_;
  size_t stored_ = 0;
  size_t block_bytes_ = 0;
  int verify_threads_ = 1;
  ReleaseFn release_;
};

class StoreClient {
 public:
  // The real client. Validates the options and prepares connections; nodes are contacted
  // lazily, so a store that is down at start-up is not an error.
  static absl::StatusOr<std::unique_ptr<StoreClient>> Create(const StoreClientOptions& options);
  virtual ~StoreClient() = default;
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  // Number of leading `keys` (consecutive blocks of one prefix) stored anywhere. Moves no data.
  virtual absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys) = 0;

  // Stores blocks[i] (block_bytes each) under keys[i], whose parent is parents[i]: the key it
  // was chained from (ChainBlockKey's `prev`: the block before it in its prefix, or `ns` for a
  // prefix's first block). One call may mix blocks of several prefixes (ChainParents gives
  // the parents of one). Keys already present are not rewritten.
  virtual absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                        absl::Span<const BlockKey> parents,
                                        absl::Span<const void* const> blocks,
                                        size_t block_bytes) = 0;

  // Fetches the longest stored prefix of `keys` into buffers[0..n) and returns n. Blocks are
  // pinned only while they are copied, and released before returning.
  virtual absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                     absl::Span<void* const> buffers, size_t block_bytes) = 0;

  // Contacts every node (connecting if needed) and reports what it knows.
  virtual std::vector<StoreNodeInfo> Nodes() = 0;
  // Replaces the store nodes (membership, docs/membership.md: nodes join and leave). Keys move
  // to their new rendezvous owners, so a change costs misses, never errors or wrong blocks.
  // Nodes that stay keep their connections. Applied at the start of the next call, on that
  // call's thread; any thread, at any time. An empty set: every call is a miss.
  virtual void SetStores(std::vector<std::string> addresses) = 0;
  // Whether some node's data plane is connected, as of this client's last call. Contacts
  // nothing and takes no lock of the client: any thread, at any time (e.g. a status RPC while
  // another thread transfers).
  virtual bool AnyNodeConnected() const = 0;
  // Blocks that Get fetched and found not matching their checksums (each ended its prefix: a
  // miss), since the client was made; for the worker's metrics (docs/observability.md).
  // Contacts nothing and takes no lock: any thread.
  virtual uint64_t ChecksumFailures() const = 0;

  // Same-host zero-copy reads (docs/serving.md, "Decode scheduler"): the longest stored prefix
  // of `keys` whose blocks are all in pools mapped into this process, leased and not copied.
  // The caller reads them (e.g. the GPU's copy engine, after registering MappedPools() with
  // CUDA), checks them with Verify and releases the handle. Node failures shorten the prefix;
  // errors only for bad arguments. Do not call other methods of this client while the handle
  // holds blocks: a reconnection would unmap the pool.
  virtual absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys,
                                                 size_t block_bytes) = 0;

  // The pools of the stores this client reaches through shared memory (connecting to every
  // available node first). A pool's mapping changes when its store restarts.
  virtual std::vector<MappedPool> MappedPools() = 0;
  // `callback` runs with each pool from MappedPools just before the client unmaps it (its
  // store restarted or failed), so that whoever registered the pool (with CUDA: KvTier,
  // docs/serving.md) unregisters it first. It runs during the call that unmaps (on its thread
  // or one of its node tasks, docs/store-protocol.md "Fan-out"), one run at a time, with the
  // client's lock held: it must not call the client. Not run by the destructor (unregister
  // before destroying the client). Null: none.
  virtual void SetUnmapCallback(std::function<void(const MappedPool&)> callback) = 0;

 protected:
  StoreClient() = default;
};

}  // namespace kvtier

#endif  // KVTIER_STORE_CLIENT_H_
