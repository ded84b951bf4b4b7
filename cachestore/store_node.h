// StoreNode: the store client's view of one kvtier-store node (docs/store-protocol.md): its
// control-plane calls (GetInfo, Lookup, Reserve, Commit, Abort, Release) and its data plane,
// with one write path and one read path that hide how bytes move. A same-host store's pool is
// mapped into this process (ucp_rkey_ptr) and copied to and from with memcpy, hashing each
// block while it is in cache; any other store is reached with UCX put/get (one flush per batch)
// over StoreClientOptions::lanes endpoints, each on a UCX worker of its own, the blocks of a
// batch spread over them and each lane hashing its own blocks (docs/store-protocol.md,
// "Lanes"). Either way the caller gets the checksum of every block moved.
//
// A node connects lazily and reconnects when the store's incarnation changes, so bytes are
// never moved to or from a restarted store's predecessor; a mapped pool is handed to the
// client's unmap callback before it is unmapped. A failed call or transfer marks the node
// down: it is skipped (its calls fail at once) for StoreClientOptions::retry_after. An
// INVALID_ARGUMENT answer is the caller's error, not the node's, and does not mark it down;
// nor do failed Release and Abort calls (best effort: the store's reaper frees what they miss).
// A timed-out transfer has force-closed the endpoint when Write or Read returns, so nothing of
// it lands afterwards (Abort is sent only then). Nothing the store answers is trusted: every
// offset and size is checked against the pool and slot sizes of GetInfo before any byte
// moves (CheckSlotRange), and a bad one is a node failure.
//
// Ownership: owns the gRPC stub, its UCX workers (one per lane, created with the first
// connection, kept across reconnections) and the data-plane state of one incarnation (each
// lane's endpoint and pool rkey, and the mapping of a same-host pool, which lane 0's rkey
// owns: pointers into it die with the connection). Borrows the client's UCX context and
// unmap callback, which must outlive it.
// Thread-safety: thread-compatible, except connected(), which any thread may call. The owning
// client calls one node from one thread at a time and different nodes from different threads
// at once (each node's worker is its own, docs/store-protocol.md "Fan-out"); pointers from
// MappedSlot() may be read by any thread until the next call.
#ifndef KVTIER_CACHESTORE_STORE_NODE_H_
#define KVTIER_CACHESTORE_STORE_NODE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "transport/ucx.h"

namespace grpc {
class ChannelCredentials;
}

namespace kvtier {

// Threads for copying or hashing `blocks` blocks of `block_bytes` in memory: one per 8 MiB, up
// to `max_threads` (a thread costs tens of microseconds to start).
int CopyThreads(int max_threads, size_t blocks, size_t block_bytes);

// OK when [offset, offset + bytes) is inside one slot of the pool that `info` describes
// (offset a multiple of slot_bytes, bytes at most slot_bytes); else Internal: the store's
// answer is not to be used.
absl::Status CheckSlotRange(const v1::GetInfoResponse& info, uint64_t offset, uint64_t bytes);

// One node's answer to a lookup of one slice of keys, however many calls it took.
struct NodeLookup {
  uint64_t incarnation = 0;
  size_t hits = 0;                        // leading keys present
  std::vector<v1::BlockLocation> blocks;  // with a lease: one per hit
  std::vector<uint64_t> lease_ids;        // with a lease: to release, one per call
};

class StoreNode {
 public:
  using UnmapFn = std::function<void(const MappedPool&)>;

  // `creds`: how the control plane is reached (common/tls.h, MakeChannelCredentials).
  // `copy_threads`: most threads of one copy on the mapped path. `on_unmap` (the client's, may
  // hold an empty function) runs before a mapped pool is unmapped.
  StoreNode(std::string address, transport::UcxContext* ucx, const StoreClientOptions& options,
            const std::shared_ptr<grpc::ChannelCredentials>& creds, int copy_threads,
            const UnmapFn* on_unmap);
  ~StoreNode();
  StoreNode(const StoreNode&) = delete;
  StoreNode& operator=(const StoreNode&) = delete;

  const std::string& address() const { return address_; }
  // False while the node is skipped after a failure.
  bool available() const;
  // Whether the data plane is connected now. Any thread.
  bool connected() const { return connected_.load(std::memory_order_relaxed); }
  // Connects the data plane to the store's current incarnation unless it is connected.
  absl::Status Connect();
  // From the last GetInfo (0 before the first connection).
  uint64_t slot_bytes() const { return info_.slot_bytes(); }
  // Most keys one Lookup or Reserve may name (4096 before the first connection).
  size_t max_batch_keys() const;
  // Connects (without marking the node down on failure) and describes it.
  StoreNodeInfo Describe();
  // The pool mapped into this process, connecting first; base null when it is not mapped.
  MappedPool Pool();

  // Longest present prefix of `keys`, in calls of at most max_batch_keys() keys (a call whose
  // answer is short ends it). With `lease`, the answer names each hit's slot and pins them; a
  // malformed answer is a node failure (a failure after the first call ends the prefix there).
  absl::StatusOr<NodeLookup> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                    bool lease);
  // Reserves slots for `keys` (at most max_batch_keys(), consecutive blocks of one prefix),
  // whose first one's parent is `parent` (null: none).
  absl::StatusOr<v1::ReserveResponse> Reserve(const NamespaceId& ns, const BlockKey* parent,
                                              absl::Span<const BlockKey> keys, size_t block_bytes);
  // Commits a reservation with the checksum of each reserved block, in order.
  absl::StatusOr<v1::CommitResponse> Commit(uint64_t reservation_id,
                                            absl::Span<const uint64_t> checksums);
  void Abort(uint64_t reservation_id);
  // Whether the lease was still held (0: nothing leased, true). Not sent to a node that is
  // down (the store's lease timeout frees it): false.
  bool Release(uint64_t lease_id);

  // The one write path: copies blocks[i] (block_bytes each) into the slot at offsets[i] of the
  // pool of `incarnation` (the store's answer that granted the slots; reconnecting if needed)
  // and returns each block's checksum as written. Nothing is written after `reserved_until`
  // (when the store may reap the reservation and reuse its slots): a mapped copy checks it
  // before each block and a UCX batch is bounded by it; past it, DeadlineExceeded.
  absl::StatusOr<std::vector<uint64_t>> Write(uint64_t incarnation,
                                              absl::Span<const void* const> blocks,
                                              absl::Span<const uint64_t> offsets,
                                              size_t block_bytes, absl::Time reserved_until);
  // The one read path: copies the slots at offsets[i] of the pool of `incarnation` into
  // buffers[i] and returns the checksum of each block as read (to compare with the lookup's).
  absl::StatusOr<std::vector<uint64_t>> Read(uint64_t incarnation,
                                             absl::Span<const uint64_t> offsets,
                                             absl::Span<void* const> buffers, size_t block_bytes);
  // In-place reads: where the `bytes` at `offset` of the pool of `incarnation` are in this
  // process, or null when that pool is not mapped or cannot be reached, or the range is not
  // inside one slot.
  const uint8_t* MappedSlot(uint64_t incarnation, uint64_t offset, size_t bytes);
  // Whether the node's pool is mapped into this process (writes and reads go through it).
  bool mapped() const { return mapped_ != nullptr; }

 private:
  // Makes sure the data plane matches `incarnation` (0: whatever is current).
  absl::Status ConnectTo(uint64_t incarnation);
  absl::Status DoConnect(uint64_t incarnation);
  // Drops the data-plane state and skips the node for retry_after.
  void MarkDown(const absl::Status& why);
  // Drops the data-plane state (after the unmap callback, for a mapped pool).
  void Disconnect();
  // CheckSlotRange for each offset against the connected incarnation; a failure marks the
  // node down.
  absl::Status CheckOffsets(absl::Span<const uint64_t> offsets, size_t block_bytes);
  // The node's answer to a failed call: marked down unless the store rejected the arguments.
  absl::Status Failed(absl::Status status);
  std::unique_ptr<grpc::ClientContext> Context() const;
  absl::Time TransferDeadline() const { return absl::Now() + options_.transfer_timeout; }

  const std::string address_;
  transport::UcxContext* const ucx_;
  const StoreClientOptions options_;
  const int copy_threads_;
  const UnmapFn* const on_unmap_;
  std::unique_ptr<v1::CacheStore::Stub> stub_;
  // One data-plane lane: its worker lives as long as the node, its endpoint and key for one
  // store incarnation (info_.incarnation()).
  struct Lane {
    std::unique_ptr<transport::UcxWorker> worker;  // declared first: destroyed last
    std::unique_ptr<transport::Endpoint> ep;
    std::unique_ptr<transport::RemoteKey> rkey;  // destroyed before its endpoint
  };
  // Lanes in use: StoreClientOptions::lanes, or lane 0 alone for a mapped pool.
  size_t LanesInUse() const { return mapped_ != nullptr ? 1 : lanes_.size(); }
  // Moves the blocks of one batch (put or get) over the lanes in use, each lane its share of
  // consecutive blocks on a thread of its own (the caller's for lane 0), hashing them into
  // (*sums) before a put or after a get. On a failure the node is marked down once every lane
  // has returned (a failed lane's endpoint is closed, so nothing of the batch moves later).
  absl::Status Transfer(bool put, absl::Span<const transport::RmaOp> ops, absl::Time deadline,
                        std::vector<uint64_t>* sums);
  std::vector<Lane> lanes_;    // StoreClientOptions::lanes of them
  uint8_t* mapped_ = nullptr;  // the pool's base in this process (same host), owned by lane 0
  v1::GetInfoResponse info_;
  absl::Time down_until_ = absl::InfinitePast();
  std::atomic<bool> connected_{false};
};

}  // namespace kvtier

#endif  // KVTIER_CACHESTORE_STORE_NODE_H_
