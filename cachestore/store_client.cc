// The real StoreClient: places keys on nodes (rendezvous hashing) and merges the nodes' answers
// into one prefix or PutResult; each node's calls and transfers are a StoreNode's. The nodes of
// one call work in parallel, one task per node (docs/store-protocol.md, "Fan-out").
#include "kvtier/store_client.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "cachestore/store_node.h"
#include "common/checksum.h"
#include "common/host_port.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "transport/net_devices.h"
#include "transport/ucx.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace kvtier {

// ---------------------------------------------------------------------------------------------
// MappedPrefix

MappedPrefix::MappedPrefix(std::vector<const uint8_t*> blocks, std::vector<uint64_t> checksums,
                           size_t stored, size_t block_bytes, int verify_threads, ReleaseFn release)
    : blocks_(std::move(blocks)),
      checksums_(std::move(checksums)),
      stored_(stored),
      block_bytes_(block_bytes),
      verify_threads_(verify_threads),
      release_(std::move(release)) {
  KVTIER_CHECK(checksums_.size() == blocks_.size() && stored_ >= blocks_.size(),
               "MappedPrefix: {} blocks, {} checksums, {} stored", blocks_.size(),
               checksums_.size(), stored_);
}

MappedPrefix::~MappedPrefix() { Release(); }

MappedPrefix::MappedPrefix(MappedPrefix&& other) noexcept { *this = std::move(other); }

MappedPrefix& MappedPrefix::operator=(MappedPrefix&& other) noexcept {
  if (this != &other) {
    Release();
    blocks_ = std::exchange(other.blocks_, {});
    checksums_ = std::exchange(other.checksums_, {});
    stored_ = std::exchange(other.stored_, 0);
    block_bytes_ = std::exchange(other.block_bytes_, 0);
    verify_threads_ = std::exchange(other.verify_threads_, 1);
    release_ = std::exchange(other.release_, nullptr);
  }
  return *this;
}

size_t MappedPrefix::Verify(size_t first, size_t count) const {
  first = std::min(first, blocks_.size());
  count = std::min(count, blocks_.size() - first);
  std::vector<char> ok(count);
  ParallelFor(count, CopyThreads(verify_threads_, count, block_bytes_), [&](size_t i) {
    ok[i] = BlockChecksum(blocks_[first + i], block_bytes_) == checksums_[first + i];
  });
  for (size_t i = 0; i < count; ++i) {
    if (!ok[i]) {
      KVTIER_LOG_LIMITED(warn,
                         "store block {} of a mapped prefix failed its checksum; treated as a miss",
                         first + i);
      return i;
    }
  }
  return count;
}

bool MappedPrefix::Release() {
  ReleaseFn release = std::exchange(release_, nullptr);
  blocks_.clear();
  checksums_.clear();
  stored_ = 0;
  return release ? release() : true;
}

// ---------------------------------------------------------------------------------------------
// The client over kvtier-store nodes

namespace {

// Keys of one operation that live on one node, with their positions in the caller's span.
struct Slice {
  StoreNode* node = nullptr;
  std::vector<size_t> index;
  std::vector<BlockKey> keys;  // keys[j] is the caller's keys[index[j]]
};

// Length of the global prefix given each node's count of leading hits in its slice.
size_t GlobalPrefix(size_t n_keys, const std::vector<Slice>& slices,
                    const std::vector<uint32_t>& node_hits) {
  size_t prefix = n_keys;
  for (size_t s = 0; s < slices.size(); ++s) {
    if (node_hits[s] < slices[s].index.size()) {
      prefix = std::min(prefix, slices[s].index[node_hits[s]]);
    }
  }
  return prefix;
}

// A run of one Put on one node: keys[index[0]], keys[index[1]], ... each the parent of the
// next, the first one's parent on this node `parent` (null: none there).
struct Run {
  const BlockKey* parent = nullptr;
  std::vector<size_t> index;  // positions in the slice
};

// Runs fn(n) for every slice n that has keys, each node on a thread of its own (the caller's
// for one of them), and returns when all have returned.
void ForEachNode(const std::vector<Slice>& slices, const std::function<void(size_t)>& fn) {
  std::vector<size_t> busy;
  for (size_t n = 0; n < slices.size(); ++n) {
    if (!slices[n].keys.empty()) busy.push_back(n);
  }
  ParallelFor(busy.size(), static_cast<int>(busy.size()), [&](size_t i) { fn(busy[i]); });
}

absl::Status CheckArgs(absl::Span<const BlockKey> keys, size_t buffers, size_t block_bytes) {
  if (buffers != keys.size()) {
    return absl::InvalidArgumentError(absl::StrCat(keys.size(), " keys but ", buffers, " buffers"));
  }
  if (block_bytes == 0) return absl::InvalidArgumentError("block_bytes must be > 0");
  return absl::OkStatus();
}

class RemoteStoreClient final : public StoreClient {
 public:
  explicit RemoteStoreClient(const StoreClientOptions& o)
      : options_(o),
        copy_threads_(o.copy_threads > 0 ? o.copy_threads
                                         : static_cast<int>(std::clamp(
                                               std::thread::hardware_concurrency() / 2, 1u, 8u))) {}

  absl::Status Init() {
    // The data plane stays on the interfaces that reach the stores, or the configured one.
    std::vector<std::string> hosts;
    for (const std::string& addr : options_.stores) {
      KVTIER_ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(addr));
      hosts.push_back(hp.host);
    }
    transport::UcxContextOptions ucx_options;
    KVTIER_ASSIGN_OR_RETURN(ucx_options.net_devices,
                            transport::ResolveNetDevices(options_.data_interface, hosts));
    ucx_options.workers_on_threads = true;  // one worker per node, the nodes in parallel
    KVTIER_ASSIGN_OR_RETURN(ucx_, transport::UcxContext::Create(ucx_options));
    KVTIER_ASSIGN_OR_RETURN(creds_, MakeChannelCredentials(options_.tls));
    absl::MutexLock lock(&mu_);
    SetNodes(options_.stores);
    return absl::OkStatus();
  }

  void SetStores(std::vector<std::string> addresses) override {
    absl::MutexLock lock(&pending_mu_);
    pending_ = std::move(addresses);
  }

  absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys) override;
  absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                absl::Span<const BlockKey> parents,
                                absl::Span<const void* const> blocks, size_t block_bytes) override;
  absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                             absl::Span<void* const> buffers, size_t block_bytes) override;
  std::vector<StoreNodeInfo> Nodes() override;
  absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         size_t block_bytes) override;
  std::vector<MappedPool> MappedPools() override;
  void SetUnmapCallback(std::function<void(const MappedPool&)> callback) override {
    absl::MutexLock lock(&mu_);
    on_unmap_ = nullptr;
    if (!callback) return;
    // Node tasks of one call may unmap at the same time: one run of the callback at a time.
    on_unmap_ = [this, callback = std::move(callback)](const MappedPool& pool) {
      absl::MutexLock unmap_lock(&unmap_mu_);
      callback(pool);
    };
  }
  bool AnyNodeConnected() const override {
    absl::MutexLock lock(&view_mu_);
    return std::any_of(view_.begin(), view_.end(), [](const auto& n) { return n->connected(); });
  }
  uint64_t ChecksumFailures() const override {
    return checksum_failures_.load(std::memory_order_relaxed);
  }

 private:
  // Makes `addresses` the node set: existing nodes are kept, new ones created, departed ones
  // dropped (destroyed once no MappedPrefix holds their leases).
  void SetNodes(const std::vector<std::string>& addresses) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::shared_ptr<StoreNode>> next;
    std::vector<uint64_t> seeds;
    for (const std::string& addr : addresses) {
      if (std::any_of(next.begin(), next.end(),
                      [&](const auto& n) { return n->address() == addr; })) {
        continue;  // listed twice
      }
      auto it = std::find_if(nodes_.begin(), nodes_.end(),
                             [&](const auto& n) { return n->address() == addr; });
      next.push_back(it != nodes_.end()
                         ? *it
                         : std::make_shared<StoreNode>(addr, ucx_.get(), options_, creds_,
                                                       copy_threads_, &on_unmap_));
      seeds.push_back(XXH3_64bits(addr.data(), addr.size()));
    }
    nodes_ = std::move(next);
    seeds_ = std::move(seeds);
    absl::MutexLock lock(&view_mu_);
    view_ = nodes_;
  }
  // Applies the last SetStores, if any; first thing of every call.
  void ApplyPendingStores() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::optional<std::vector<std::string>> pending;
    {
      absl::MutexLock lock(&pending_mu_);
      pending.swap(pending_);
    }
    if (!pending.has_value()) return;
    spdlog::info("store client: {} store node(s): {}", pending->size(),
                 absl::StrJoin(*pending, ", "));
    SetNodes(*pending);
  }

  // Rendezvous (highest random weight) hashing: each key goes to the node with the highest
  // score.
  size_t NodeOf(const BlockKey& key) const {
    size_t best = 0;
    uint64_t best_score = 0;
    for (size_t n = 0; n < nodes_.size(); ++n) {
      const uint64_t s = XXH3_64bits_withSeed(key.data(), key.size(), seeds_[n]);
      if (n == 0 || s > best_score) {
        best = n;
        best_score = s;
      }
    }
    return best;
  }

  // One slice per node, in node order. Requires a node.
  std::vector<Slice> Partition(absl::Span<const BlockKey> keys) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<Slice> slices(nodes_.size());
    for (size_t n = 0; n < nodes_.size(); ++n) slices[n].node = nodes_[n].get();
    for (size_t i = 0; i < keys.size(); ++i) {
      Slice& s = slices[NodeOf(keys[i])];
      s.index.push_back(i);
      s.keys.push_back(keys[i]);
    }
    return slices;
  }

  // A lookup on every node of `slices`, in parallel: (*resp)[n] is node n's answer (no hits
  // when it failed).
  void LookupAll(const NamespaceId& ns, const std::vector<Slice>& slices, bool lease,
                 std::vector<NodeLookup>* resp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    resp->assign(slices.size(), NodeLookup());
    ForEachNode(slices, [&](size_t n) {
      absl::StatusOr<NodeLookup> r = slices[n].node->Lookup(ns, slices[n].keys, lease);
      if (r.ok()) (*resp)[n] = std::move(*r);
    });
  }

  // Length of the global prefix given each node's answer.
  static size_t Prefix(size_t n_keys, const std::vector<Slice>& slices,
                       const std::vector<NodeLookup>& resp) {
    std::vector<uint32_t> hits(slices.size());
    for (size_t n = 0; n < slices.size(); ++n) hits[n] = static_cast<uint32_t>(resp[n].hits);
    return GlobalPrefix(n_keys, slices, hits);
  }

  // Splits slice `s` of a Put into runs of chained keys, each key's parent being its nearest
  // ancestor on the same node (walking `parents` through the batch), so that the store links
  // each block to its own prefix whatever else the batch holds.
  std::vector<Run> Runs(const NamespaceId& ns, const Slice& s, absl::Span<const BlockKey> keys,
                        absl::Span<const BlockKey> parents) const;

  // Stores the keys of one slice; adds to *result. An error only for bad arguments. Runs as one
  // node's task of a Put (ForEachNode) while the calling thread holds mu_, so the node set it
  // reads (Runs, NodeOf) stays as it is.
  absl::Status PutSlice(const NamespaceId& ns, const Slice& s, absl::Span<const BlockKey> keys,
                        absl::Span<const BlockKey> parents, absl::Span<const void* const> blocks,
                        size_t block_bytes, PutResult* result);
  // Reserves, writes and commits one run's keys [from, to) of slice `s`; adds to *result.
  // False when the node failed (the caller skips the rest).
  absl::StatusOr<bool> PutRun(const NamespaceId& ns, const Slice& s, const BlockKey* parent,
                              absl::Span<const size_t> run, absl::Span<const void* const> blocks,
                              size_t block_bytes, PutResult* result);
  // Reads node n's blocks of the first `prefix` keys of a Get (their locations in `resp`) into
  // `buffers`, checks their checksums and releases the node's leases. Returns where the node
  // cuts the prefix: the position of its first block that is unusable (another shape, a failed
  // read, a bad checksum), or `prefix`. One node's task of a Get.
  size_t ReadSlice(const Slice& s, const NodeLookup& resp, size_t prefix,
                   absl::Span<const BlockKey> keys, absl::Span<void* const> buffers,
                   size_t block_bytes);

  const StoreClientOptions options_;
  const int copy_threads_;
  std::atomic<uint64_t> checksum_failures_{0};
  // Shared by the nodes' workers; outlives the nodes (declared before them).
  std::unique_ptr<transport::UcxContext> ucx_;
  absl::Mutex mu_;
  std::shared_ptr<grpc::ChannelCredentials> creds_;
  // The node set and node state are under mu_, held for a whole call (its node tasks included);
  // a MappedPrefix's release holds its nodes.
  std::vector<std::shared_ptr<StoreNode>> nodes_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> seeds_ ABSL_GUARDED_BY(mu_);  // rendezvous seed of each node
  absl::Mutex pending_mu_;
  std::optional<std::vector<std::string>> pending_ ABSL_GUARDED_BY(pending_mu_);
  // The node set for AnyNodeConnected, which takes no lock a transfer holds.
  mutable absl::Mutex view_mu_;
  std::vector<std::shared_ptr<StoreNode>> view_ ABSL_GUARDED_BY(view_mu_);
  std::function<void(const MappedPool&)> on_unmap_ ABSL_GUARDED_BY(mu_);
  absl::Mutex unmap_mu_;  // serializes the runs of on_unmap_
};

absl::StatusOr<size_t> RemoteStoreClient::Lookup(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys) {
  if (keys.empty()) return 0;
  absl::MutexLock lock(&mu_);
  ApplyPendingStores();
  if (nodes_.empty()) return 0;
  const std::vector<Slice> slices = Partition(keys);
  std::vector<NodeLookup> resp;
  LookupAll(ns, slices, /*lease=*/false, &resp);
  return Prefix(keys.size(), slices, resp);
}

std::vector<Run> RemoteStoreClient::Runs(const NamespaceId& ns, const Slice& s,
                                         absl::Span<const BlockKey> keys,
                                         absl::Span<const BlockKey> parents) const {
  absl::flat_hash_map<BlockKey, size_t> position;  // key -> index in the caller's batch
  for (size_t i = 0; i < keys.size(); ++i) position.emplace(keys[i], i);
  const size_t node = static_cast<size_t>(
      std::find_if(nodes_.begin(), nodes_.end(), [&](const auto& n) { return n.get() == s.node; }) -
      nodes_.begin());
  const size_t max_run = s.node->max_batch_keys();
  std::vector<Run> runs;
  absl::flat_hash_map<BlockKey, size_t> run_ending_with;  // last key of a run -> its run
  for (size_t j = 0; j < s.keys.size(); ++j) {
    // The nearest ancestor on this node: up through the batch while ancestors live on other
    // nodes (at most one step per key of the batch, whatever the caller's parents say).
    const BlockKey* parent = nullptr;
    const BlockKey* p = &parents[s.index[j]];
    for (size_t step = 0; step <= keys.size() && *p != ns; ++step) {
      if (NodeOf(*p) == node) {
        parent = p;
        break;
      }
      auto it = position.find(*p);
      if (it == position.end()) break;  // outside the batch, on another node
      p = &parents[it->second];
    }
    size_t r = runs.size();
    if (parent != nullptr) {
      auto it = run_ending_with.find(*parent);
      if (it != run_ending_with.end() && runs[it->second].index.size() < max_run) {
        r = it->second;
        run_ending_with.erase(it);
      }
    }
    if (r == runs.size()) runs.push_back(Run{parent, {}});
    runs[r].index.push_back(j);
    run_ending_with[s.keys[j]] = r;
  }
  return runs;
}

absl::StatusOr<bool> RemoteStoreClient::PutRun(const NamespaceId& ns, const Slice& s,
                                               const BlockKey* parent, absl::Span<const size_t> run,
                                               absl::Span<const void* const> blocks,
                                               size_t block_bytes, PutResult* result) {
  StoreNode* n = s.node;
  std::vector<BlockKey> keys;
  for (size_t j : run) keys.push_back(s.keys[j]);
  const absl::Time asked = absl::Now();
  absl::StatusOr<v1::ReserveResponse> resv = n->Reserve(ns, parent, keys, block_bytes);
  if (!resv.ok()) {
    if (absl::IsInvalidArgument(resv.status())) return resv.status();
    result->skipped += run.size();
    return false;
  }
  std::vector<const void*> reserved;
  std::vector<uint64_t> offsets;
  for (size_t k = 0; k < run.size(); ++k) {
    switch (resv->outcomes(static_cast<int>(k))) {
      case v1::RESERVE_OUTCOME_RESERVED:
        reserved.push_back(blocks[s.index[run[k]]]);
        offsets.push_back(resv->offsets(static_cast<int>(k)));
        break;
      case v1::RESERVE_OUTCOME_PRESENT:
        ++result->present;
        break;
      case v1::RESERVE_OUTCOME_IN_PROGRESS:  // another writer's, which may still fail
        ++result->skipped;
        break;
      default:
        ++result->skipped;
    }
  }
  if (reserved.empty()) return true;
  // The store may reap the reservation (and reuse its slots) once its timeout passes, counted
  // from when it answered: stop writing well before, counting from when we asked.
  const absl::Time reserved_until =
      resv->reservation_timeout_ms() == 0
          ? absl::InfiniteFuture()
          : asked + absl::Milliseconds(resv->reservation_timeout_ms()) * 3 / 4;
  absl::StatusOr<std::vector<uint64_t>> sums =
      n->Write(resv->incarnation(), reserved, offsets, block_bytes, reserved_until);
  // A failed Write has closed its endpoint (nothing of it lands later): free the slots now.
  if (!sums.ok()) n->Abort(resv->reservation_id());
  absl::StatusOr<v1::CommitResponse> done =
      sums.ok() ? n->Commit(resv->reservation_id(), *sums) : sums.status();
  if (!done.ok()) {
    result->skipped += reserved.size();
    return false;
  }
  result->stored += done->committed();
  if (n->mapped()) result->stored_mapped += done->committed();
  result->skipped += done->rejected_keys_size();
  return true;
}

absl::Status RemoteStoreClient::PutSlice(const NamespaceId& ns, const Slice& s,
                                         absl::Span<const BlockKey> keys,
                                         absl::Span<const BlockKey> parents,
                                         absl::Span<const void* const> blocks, size_t block_bytes,
                                         PutResult* result) {
  StoreNode* n = s.node;
  if (!n->Connect().ok()) {
    result->skipped += s.keys.size();
    return absl::OkStatus();
  }
  if (block_bytes > n->slot_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("block_bytes ", block_bytes,
                                                   " exceeds the slot size ", n->slot_bytes(),
                                                   " of ", n->address()));
  }
  const std::vector<Run> runs = Runs(ns, s, keys, parents);
  for (size_t r = 0; r < runs.size(); ++r) {
    KVTIER_ASSIGN_OR_RETURN(
        bool ok, PutRun(ns, s, runs[r].parent, runs[r].index, blocks, block_bytes, result));
    if (!ok) {  // the node failed: the rest of its keys are skipped
      for (size_t rest = r + 1; rest < runs.size(); ++rest) {
        result->skipped += runs[rest].index.size();
      }
      break;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PutResult> RemoteStoreClient::Put(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys,
                                                 absl::Span<const BlockKey> parents,
                                                 absl::Span<const void* const> blocks,
                                                 size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, blocks.size(), block_bytes));
  if (parents.size() != keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(keys.size(), " keys but ", parents.size(), " parents"));
  }
  PutResult result;
  if (keys.empty()) return result;
  absl::MutexLock lock(&mu_);
  ApplyPendingStores();
  if (nodes_.empty()) {
    result.skipped = static_cast<uint32_t>(keys.size());
    return result;
  }
  const std::vector<Slice> slices = Partition(keys);
  std::vector<PutResult> results(slices.size());
  std::vector<absl::Status> errors(slices.size());
  ForEachNode(slices, [&](size_t n) {
    errors[n] = PutSlice(ns, slices[n], keys, parents, blocks, block_bytes, &results[n]);
  });
  for (size_t n = 0; n < slices.size(); ++n) {
    KVTIER_RETURN_IF_ERROR(errors[n]);
    result.stored += results[n].stored;
    result.stored_mapped += results[n].stored_mapped;
    result.present += results[n].present;
    result.skipped += results[n].skipped;
  }
  return result;
}

absl::StatusOr<size_t> RemoteStoreClient::Get(const NamespaceId& ns,
                                              absl::Span<const BlockKey> keys,
                                              absl::Span<void* const> buffers, size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, buffers.size(), block_bytes));
  if (keys.empty()) return 0;
  absl::MutexLock lock(&mu_);
  ApplyPendingStores();
  if (nodes_.empty()) return 0;
  const std::vector<Slice> slices = Partition(keys);
  std::vector<NodeLookup> resp;
  LookupAll(ns, slices, /*lease=*/true, &resp);
  const size_t prefix = Prefix(keys.size(), slices, resp);

  // Move the bytes of the prefix, the nodes in parallel; a failure shortens the prefix.
  std::vector<size_t> cut(slices.size(), prefix);
  ForEachNode(slices, [&](size_t n) {
    cut[n] = ReadSlice(slices[n], resp[n], prefix, keys, buffers, block_bytes);
  });
  return *std::min_element(cut.begin(), cut.end());
}

size_t RemoteStoreClient::ReadSlice(const Slice& s, const NodeLookup& resp, size_t prefix,
                                    absl::Span<const BlockKey> keys,
                                    absl::Span<void* const> buffers, size_t block_bytes) {
  std::vector<uint64_t> offsets;
  std::vector<void*> dst;
  for (size_t j = 0; j < resp.hits && s.index[j] < prefix; ++j) {
    const v1::BlockLocation& b = resp.blocks[j];
    if (b.size() != block_bytes) {  // a block of another shape is not ours to use
      prefix = s.index[j];
      break;
    }
    offsets.push_back(b.offset());
    dst.push_back(buffers[s.index[j]]);
  }
  if (!offsets.empty()) {
    absl::StatusOr<std::vector<uint64_t>> sums =
        s.node->Read(resp.incarnation, offsets, dst, block_bytes);
    if (!sums.ok()) {
      prefix = std::min(prefix, s.index[0]);
    } else {
      for (size_t j = 0; j < sums->size() && s.index[j] < prefix; ++j) {
        if ((*sums)[j] != resp.blocks[j].checksum()) {
          checksum_failures_.fetch_add(1, std::memory_order_relaxed);
          KVTIER_LOG_LIMITED(warn,
                             "store {}: block {} failed its checksum after get; treated as a miss",
                             s.node->address(), KeyToHex(keys[s.index[j]]));
          prefix = s.index[j];
          break;
        }
      }
    }
  }
  for (uint64_t id : resp.lease_ids) s.node->Release(id);
  return prefix;
}

absl::StatusOr<MappedPrefix> RemoteStoreClient::MapPrefix(const NamespaceId& ns,
                                                          absl::Span<const BlockKey> keys,
                                                          size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, keys.size(), block_bytes));
  if (keys.empty()) return MappedPrefix();
  absl::MutexLock lock(&mu_);
  ApplyPendingStores();
  if (nodes_.empty()) return MappedPrefix();
  const std::vector<Slice> slices = Partition(keys);
  std::vector<NodeLookup> resp;
  LookupAll(ns, slices, /*lease=*/true, &resp);
  // The release holds the nodes: a node dropped by SetStores meanwhile lives until then.
  std::vector<std::pair<std::shared_ptr<StoreNode>, uint64_t>> leases;
  for (size_t n = 0; n < slices.size(); ++n) {
    for (uint64_t id : resp[n].lease_ids) leases.emplace_back(nodes_[n], id);
  }
  const size_t stored = Prefix(keys.size(), slices, resp);
  // The prefix ends at the first block that is not in a mapped pool of the leased incarnation.
  size_t prefix = stored;
  std::vector<const uint8_t*> where(prefix, nullptr);
  std::vector<uint64_t> checksums(prefix, 0);
  for (size_t n = 0; n < slices.size(); ++n) {
    const Slice& s = slices[n];
    if (resp[n].hits == 0 || s.index[0] >= prefix) continue;
    for (size_t j = 0; j < resp[n].hits && s.index[j] < prefix; ++j) {
      const v1::BlockLocation& b = resp[n].blocks[j];
      if (b.size() != block_bytes) {  // a block of another shape is not ours to use
        prefix = s.index[j];
        break;
      }
      const uint8_t* p = s.node->MappedSlot(resp[n].incarnation, b.offset(), block_bytes);
      if (p == nullptr) {  // not mapped, or the node failed: none of its pointers hold
        prefix = std::min(prefix, s.index[0]);
        break;
      }
      where[s.index[j]] = p;
      checksums[s.index[j]] = b.checksum();
    }
  }
  where.resize(prefix);
  checksums.resize(prefix);
  return MappedPrefix(std::move(where), std::move(checksums), stored, block_bytes, copy_threads_,
                      [this, leases = std::move(leases)]() mutable {
                        absl::MutexLock lock(&mu_);
                        bool held = true;
                        for (const auto& [node, id] : leases) held &= node->Release(id);
                        // A node SetStores dropped meanwhile ends here, under the lock.
                        leases.clear();
                        return held;
                      });
}

std::vector<MappedPool> RemoteStoreClient::MappedPools() {
  absl::MutexLock lock(&mu_);
  ApplyPendingStores();
  std::vector<MappedPool> out;
  for (auto& n : nodes_) {
    const MappedPool p = n->Pool();
    if (p.base != nullptr) out.push_back(p);
  }
  return out;
}

std::vector<StoreNodeInfo> RemoteStoreClient::Nodes() {
  absl::MutexLock lock(&mu_);
  ApplyPendingStores();
  std::vector<StoreNodeInfo> out;
  for (auto& n : nodes_) out.push_back(n->Describe());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Create(
    const StoreClientOptions& options) {
  if (options.stores.empty() && options.data_interface.empty()) {
    return absl::InvalidArgumentError(
        "no store addresses given (a client whose stores come from SetStores needs "
        "data_interface)");
  }
  auto client = std::make_unique<RemoteStoreClient>(options);
  KVTIER_RETURN_IF_ERROR(client->Init());
  return std::unique_ptr<StoreClient>(std::move(client));
}

}  // namespace kvtier
