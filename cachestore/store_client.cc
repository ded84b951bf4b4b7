#include "kvtier/store_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cachestore/grpc_status.h"
#include "common/checksum.h"
#include "common/logging.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "transport/ucx.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace kvtier {

namespace {

// Rendezvous (highest random weight) hashing: each key goes to the node with the highest score.
uint64_t Score(uint64_t node_seed, const BlockKey& key) {
  return XXH3_64bits_withSeed(key.data(), key.size(), node_seed);
}

}  // namespace

class StoreClient::Impl {
 public:
  explicit Impl(const StoreClientOptions& o)
      : options_(o),
        copy_threads_(o.copy_threads > 0 ? o.copy_threads
                                         : static_cast<int>(std::clamp(
                                               std::thread::hardware_concurrency() / 2, 1u, 8u))) {}

  absl::Status Init() {
    KVTIER_ASSIGN_OR_RETURN(ucx_, transport::UcxContext::Create());
    KVTIER_ASSIGN_OR_RETURN(worker_, transport::UcxWorker::Create(ucx_.get()));
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(16 << 20);
    for (const std::string& addr : options_.stores) {
      auto node = std::make_unique<Node>();
      node->address = addr;
      node->seed = XXH3_64bits(addr.data(), addr.size());
      node->stub = v1::CacheStore::NewStub(
          grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
      nodes_.push_back(std::move(node));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys);
  absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                absl::Span<const void* const> blocks, size_t block_bytes);
  absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                             absl::Span<void* const> buffers, size_t block_bytes);
  std::vector<StoreNodeInfo> Nodes();
  absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         size_t block_bytes);
  size_t VerifyMapped(const MappedPrefix& m, size_t block_bytes) const;
  bool Unmap(MappedPrefix* m);
  std::vector<MappedPool> MappedPools();

 private:
  struct Node {
    std::string address;
    uint64_t seed = 0;
    std::unique_ptr<v1::CacheStore::Stub> stub;
    // Data-plane connection, valid for one store incarnation.
    std::unique_ptr<transport::Endpoint> ep;
    std::unique_ptr<transport::RemoteKey> rkey;
    uint8_t* mapped = nullptr;  // the pool's base in this process (same host), owned by rkey
    v1::GetInfoResponse info;
    absl::Time down_until = absl::InfinitePast();
  };
  // Keys of one operation that live on one node, with their positions in the caller's span.
  struct Slice {
    Node* node;
    std::vector<size_t> index;
  };

  std::vector<Slice> Partition(absl::Span<const BlockKey> keys) {
    std::vector<Slice> slices(nodes_.size());
    for (size_t n = 0; n < nodes_.size(); ++n) slices[n].node = nodes_[n].get();
    for (size_t i = 0; i < keys.size(); ++i) {
      size_t best = 0;
      uint64_t best_score = 0;
      for (size_t n = 0; n < nodes_.size(); ++n) {
        uint64_t s = Score(nodes_[n]->seed, keys[i]);
        if (n == 0 || s > best_score) {
          best = n;
          best_score = s;
        }
      }
      slices[best].index.push_back(i);
    }
    return slices;
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    return ctx;
  }

  bool Available(Node* n) { return absl::Now() >= n->down_until; }

  // Threads for copying `blocks` blocks of `block_bytes` on the mapped path: one per 8 MiB,
  // up to copy_threads_ (a thread costs tens of microseconds to start).
  int CopyThreads(size_t blocks, size_t block_bytes) const {
    return static_cast<int>(
        std::min<size_t>(copy_threads_, blocks * block_bytes / (size_t{8} << 20) + 1));
  }

  // Drops the node's data-plane state and skips it for a while.
  void MarkDown(Node* n, const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    spdlog::warn("store {} unavailable for {}: {}", n->address,
                 absl::FormatDuration(options_.retry_after), why.ToString());
    if (n->ep != nullptr) n->ep->MarkFailed();
    n->mapped = nullptr;
    n->rkey.reset();
    n->ep.reset();
    n->down_until = absl::Now() + options_.retry_after;
  }

  // Makes sure the node's data plane matches `incarnation` (0: whatever is current).
  absl::Status Connect(Node* n, uint64_t incarnation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (n->ep != nullptr && !n->ep->failed() &&
        (incarnation == 0 || incarnation == n->info.incarnation())) {
      return absl::OkStatus();
    }
    // The old connection, if any, points at a dead or replaced process: close it forcibly.
    if (n->ep != nullptr) n->ep->MarkFailed();
    n->mapped = nullptr;
    n->rkey.reset();
    n->ep.reset();
    v1::GetInfoRequest req;
    v1::GetInfoResponse info;
    KVTIER_RETURN_IF_ERROR(FromGrpc(n->stub->GetInfo(Ctx().get(), req, &info)));
    if (incarnation != 0 && info.incarnation() != incarnation) {
      return absl::UnavailableError("store restarted during the operation");
    }
    KVTIER_ASSIGN_OR_RETURN(n->ep,
                            transport::Endpoint::Connect(worker_.get(), info.ucx_worker_address()));
    KVTIER_ASSIGN_OR_RETURN(n->rkey, n->ep->UnpackRkey(info.pool_rkey()));
    if (options_.map_same_host_pool) {
      n->mapped = static_cast<uint8_t*>(n->rkey->LocalPointer(info.pool_base_address()));
    }
    n->info = std::move(info);
    spdlog::debug("connected to store {} (incarnation {:x})", n->address, n->info.incarnation());
    return absl::OkStatus();
  }

  absl::Status CheckArgs(absl::Span<const BlockKey> keys, size_t buffers, size_t block_bytes) {
    if (buffers != keys.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(keys.size(), " keys but ", buffers, " buffers"));
    }
    if (block_bytes == 0) return absl::InvalidArgumentError("block_bytes must be > 0");
    return absl::OkStatus();
  }

  // Per node: how many of its keys (in slice order) form its present prefix; -1 if down.
  void LookupNode(const NamespaceId& ns, absl::Span<const BlockKey> keys, Slice& s, bool lease,
                  v1::LookupResponse* resp, bool* ok) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A leasing lookup on every node of `slices`: (*resp)[n] is node n's answer and (*hits)[n]
  // how many of its slice's keys it holds, 0 when it failed or answered malformed.
  void LeasedLookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                    std::vector<Slice>& slices, std::vector<v1::LookupResponse>* resp,
                    std::vector<uint32_t>* hits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    resp->assign(slices.size(), v1::LookupResponse());
    hits->assign(slices.size(), 0);
    for (size_t n = 0; n < slices.size(); ++n) {
      bool ok = false;
      LookupNode(ns, keys, slices[n], /*lease=*/true, &(*resp)[n], &ok);
      if (!ok) continue;
      const uint32_t h = (*resp)[n].hit_count();
      if ((*resp)[n].blocks_size() == static_cast<int>(h)) (*hits)[n] = h;  // else malformed
    }
  }

  // Length of the global prefix given each node's present count for its slice.
  static size_t GlobalPrefix(size_t n_keys, const std::vector<Slice>& slices,
                             const std::vector<uint32_t>& node_hits) {
    size_t prefix = n_keys;
    for (size_t s = 0; s < slices.size(); ++s) {
      if (node_hits[s] < slices[s].index.size()) {
        prefix = std::min(prefix, slices[s].index[node_hits[s]]);
      }
    }
    return prefix;
  }

  // Whether the lease was still held.
  bool ReleaseLease(Node* n, uint64_t lease_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (lease_id == 0) return true;
    v1::ReleaseRequest req;
    req.set_lease_id(lease_id);
    v1::ReleaseResponse resp;
    grpc::Status s = n->stub->Release(Ctx().get(), req, &resp);
    if (!s.ok()) spdlog::debug("release on {}: {}", n->address, s.error_message());
    return s.ok();
  }

  const StoreClientOptions options_;
  const int copy_threads_;
  std::unique_ptr<transport::UcxContext> ucx_;
  absl::Mutex mu_;
  std::unique_ptr<transport::UcxWorker> worker_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Node>> nodes_;  // the list is fixed; Node state is under mu_
};

void StoreClient::Impl::LookupNode(const NamespaceId& ns, absl::Span<const BlockKey> keys, Slice& s,
                                   bool lease, v1::LookupResponse* resp, bool* ok) {
  *ok = false;
  if (s.index.empty() || !Available(s.node)) return;
  const uint32_t max_keys = s.node->info.max_batch_keys() ? s.node->info.max_batch_keys() : 4096;
  if (s.index.size() > max_keys) s.index.resize(max_keys);  // the rest counts as missing
  v1::LookupRequest req;
  req.set_namespace_id(std::string(KeyBytes(ns)));
  for (size_t i : s.index) req.add_keys(std::string(KeyBytes(keys[i])));
  req.set_lease(lease);
  grpc::Status st = s.node->stub->Lookup(Ctx().get(), req, resp);
  if (!st.ok()) {
    if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      spdlog::error("store {} rejected lookup: {}", s.node->address, st.error_message());
    } else {
      MarkDown(s.node, FromGrpc(st));
    }
    return;
  }
  *ok = true;
}

absl::StatusOr<size_t> StoreClient::Impl::Lookup(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys) {
  if (keys.empty()) return 0;
  absl::MutexLock lock(&mu_);
  std::vector<Slice> slices = Partition(keys);
  std::vector<uint32_t> hits(slices.size(), 0);
  for (size_t n = 0; n < slices.size(); ++n) {
    v1::LookupResponse resp;
    bool ok = false;
    LookupNode(ns, keys, slices[n], /*lease=*/false, &resp, &ok);
    if (ok) hits[n] = resp.hit_count();
  }
  return GlobalPrefix(keys.size(), slices, hits);
}

absl::StatusOr<PutResult> StoreClient::Impl::Put(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys,
                                                 absl::Span<const void* const> blocks,
                                                 size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, blocks.size(), block_bytes));
  PutResult result;
  if (keys.empty()) return result;
  absl::MutexLock lock(&mu_);
  for (Slice& s : Partition(keys)) {
    if (s.index.empty()) continue;
    Node* n = s.node;
    const uint32_t before = result.stored + result.present;
    auto skip_rest = [&] {
      result.skipped += s.index.size() - (result.stored + result.present - before);
    };
    if (!Available(n)) {
      skip_rest();
      continue;
    }
    if (absl::Status c = Connect(n, 0); !c.ok()) {
      MarkDown(n, c);
      skip_rest();
      continue;
    }
    if (block_bytes > n->info.slot_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("block_bytes ", block_bytes,
                                                     " exceeds the slot size ",
                                                     n->info.slot_bytes(), " of ", n->address));
    }
    const size_t chunk = n->info.max_batch_keys() ? n->info.max_batch_keys() : 4096;
    // Chunks of at most max_batch_keys; each key's parent is its nearest ancestor on this node.
    for (size_t start = 0; start < s.index.size(); start += chunk) {
      const size_t end = std::min(s.index.size(), start + chunk);
      v1::ReserveRequest req;
      req.set_namespace_id(std::string(KeyBytes(ns)));
      if (start > 0) req.set_parent_key(std::string(KeyBytes(keys[s.index[start - 1]])));
      for (size_t j = start; j < end; ++j) req.add_keys(std::string(KeyBytes(keys[s.index[j]])));
      req.set_block_bytes(block_bytes);
      v1::ReserveResponse resv;
      absl::Status st = FromGrpc(n->stub->Reserve(Ctx().get(), req, &resv));
      if (absl::IsInvalidArgument(st)) return st;
      if (st.ok() && resv.incarnation() != n->info.incarnation())
        st = Connect(n, resv.incarnation());
      if (!st.ok() || resv.outcomes_size() != static_cast<int>(end - start)) {
        if (st.ok()) st = absl::InternalError("malformed reserve response");
        MarkDown(n, st);
        result.skipped += s.index.size() - start;
        break;
      }
      std::vector<transport::RmaOp> ops;
      v1::CommitRequest commit;
      commit.set_reservation_id(resv.reservation_id());
      const uint64_t base = n->info.pool_base_address();
      for (size_t j = start; j < end; ++j) {
        const int k = static_cast<int>(j - start);
        switch (resv.outcomes(k)) {
          case v1::RESERVE_OUTCOME_RESERVED:
            ops.push_back(
                {const_cast<void*>(blocks[s.index[j]]), base + resv.offsets(k), block_bytes});
            break;
          case v1::RESERVE_OUTCOME_PRESENT:
            ++result.present;
            break;
          default:
            ++result.skipped;
        }
      }
      if (ops.empty()) continue;
      std::vector<uint64_t> sums(ops.size());
      absl::Status moved;
      if (n->mapped != nullptr) {  // same host: hash, stream the copy
        ParallelFor(ops.size(), CopyThreads(ops.size(), block_bytes), [&](size_t i) {
          sums[i] = ChecksumAndStreamCopy(n->mapped + (ops[i].remote_address - base), ops[i].local,
                                          block_bytes);
        });
      } else {
        for (size_t i = 0; i < ops.size(); ++i) sums[i] = BlockChecksum(ops[i].local, block_bytes);
        moved = n->ep->PutBatch(*n->rkey, ops, absl::Now() + options_.transfer_timeout);
      }
      for (uint64_t sum : sums) commit.add_checksums(sum);
      if (!moved.ok()) {
        v1::AbortRequest abort;
        abort.set_reservation_id(resv.reservation_id());
        v1::AbortResponse aborted;
        (void)n->stub->Abort(Ctx().get(), abort, &aborted);  // else the reservation times out
        MarkDown(n, moved);
        result.skipped += ops.size() + (s.index.size() - end);
        break;
      }
      v1::CommitResponse done;
      absl::Status committed = FromGrpc(n->stub->Commit(Ctx().get(), commit, &done));
      if (!committed.ok()) {
        MarkDown(n, committed);
        result.skipped += ops.size() + (s.index.size() - end);
        break;
      }
      result.stored += done.committed();
      result.skipped += done.rejected_keys_size();
      if (done.rejected_keys_size() > 0) {
        spdlog::warn("store {} rejected {} blocks on checksum", n->address,
                     done.rejected_keys_size());
      }
    }
  }
  return result;
}

absl::StatusOr<size_t> StoreClient::Impl::Get(const NamespaceId& ns,
                                              absl::Span<const BlockKey> keys,
                                              absl::Span<void* const> buffers, size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, buffers.size(), block_bytes));
  if (keys.empty()) return 0;
  absl::MutexLock lock(&mu_);
  std::vector<Slice> slices = Partition(keys);
  std::vector<v1::LookupResponse> resp;
  std::vector<uint32_t> hits;
  LeasedLookup(ns, keys, slices, &resp, &hits);
  size_t prefix = GlobalPrefix(keys.size(), slices, hits);

  // Move the bytes of the prefix, node by node; a failure shortens the prefix.
  for (size_t n = 0; n < slices.size() && prefix > 0; ++n) {
    Slice& s = slices[n];
    std::vector<transport::RmaOp> ops;
    std::vector<size_t> positions;  // slice positions moved, in order
    for (size_t j = 0; j < hits[n] && s.index[j] < prefix; ++j) {
      const v1::BlockLocation& b = resp[n].blocks(static_cast<int>(j));
      if (b.size() != block_bytes) {  // a block of another shape is not ours to use
        prefix = s.index[j];
        break;
      }
      positions.push_back(j);
    }
    if (positions.empty()) continue;
    absl::Status st = Connect(s.node, resp[n].incarnation());
    // Copied bytes' checksums, in `positions` order: computed during the copy on the mapped
    // path, after the UCX get otherwise.
    std::vector<uint64_t> sums;
    if (st.ok() && s.node->mapped != nullptr) {
      sums.resize(positions.size());
      ParallelFor(positions.size(), CopyThreads(positions.size(), block_bytes), [&](size_t p) {
        const size_t j = positions[p];
        sums[p] = CopyAndChecksum(buffers[s.index[j]],
                                  s.node->mapped + resp[n].blocks(static_cast<int>(j)).offset(),
                                  block_bytes);
      });
    } else if (st.ok()) {
      const uint64_t base = s.node->info.pool_base_address();
      for (size_t j : positions) {
        ops.push_back({buffers[s.index[j]], base + resp[n].blocks(static_cast<int>(j)).offset(),
                       block_bytes});
      }
      st = s.node->ep->GetBatch(*s.node->rkey, ops, absl::Now() + options_.transfer_timeout);
      for (size_t j : positions) sums.push_back(BlockChecksum(buffers[s.index[j]], block_bytes));
    }
    if (!st.ok()) {
      MarkDown(s.node, st);
      prefix = std::min(prefix, s.index[positions.front()]);
      continue;
    }
    for (size_t p = 0; p < positions.size(); ++p) {
      const size_t j = positions[p];
      const size_t i = s.index[j];
      if (i >= prefix) break;
      if (sums[p] != resp[n].blocks(static_cast<int>(j)).checksum()) {
        spdlog::warn("store {}: block {} failed its checksum after get; treated as a miss",
                     s.node->address, KeyToHex(keys[i]));
        prefix = i;
        break;
      }
    }
  }
  for (size_t n = 0; n < slices.size(); ++n) ReleaseLease(slices[n].node, resp[n].lease_id());
  return prefix;
}

absl::StatusOr<MappedPrefix> StoreClient::Impl::MapPrefix(const NamespaceId& ns,
                                                          absl::Span<const BlockKey> keys,
                                                          size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, keys.size(), block_bytes));
  MappedPrefix m;
  if (keys.empty()) return m;
  absl::MutexLock lock(&mu_);
  std::vector<Slice> slices = Partition(keys);
  std::vector<v1::LookupResponse> resp;
  std::vector<uint32_t> hits;
  LeasedLookup(ns, keys, slices, &resp, &hits);
  for (size_t n = 0; n < slices.size(); ++n) {
    if (resp[n].lease_id() != 0) m.leases.emplace_back(n, resp[n].lease_id());
  }
  m.stored = GlobalPrefix(keys.size(), slices, hits);
  size_t prefix = m.stored;
  // The prefix ends at the first block that is not in a mapped pool of the leased incarnation.
  std::vector<const uint8_t*> where(prefix, nullptr);
  for (size_t n = 0; n < slices.size(); ++n) {
    Slice& s = slices[n];
    if (hits[n] == 0 || s.index.empty() || s.index[0] >= prefix) continue;
    const bool mapped = Connect(s.node, resp[n].incarnation()).ok() && s.node->mapped != nullptr;
    for (size_t j = 0; j < hits[n] && s.index[j] < prefix; ++j) {
      const v1::BlockLocation& b = resp[n].blocks(static_cast<int>(j));
      if (!mapped || b.size() != block_bytes) {
        prefix = s.index[j];
        break;
      }
      where[s.index[j]] = s.node->mapped + b.offset();
    }
  }
  m.blocks.assign(where.begin(), where.begin() + static_cast<ptrdiff_t>(prefix));
  m.checksums.resize(prefix);
  for (size_t n = 0; n < slices.size(); ++n) {
    const Slice& s = slices[n];
    for (size_t j = 0; j < hits[n] && j < s.index.size() && s.index[j] < prefix; ++j) {
      m.checksums[s.index[j]] = resp[n].blocks(static_cast<int>(j)).checksum();
    }
  }
  return m;
}

size_t StoreClient::Impl::VerifyMapped(const MappedPrefix& m, size_t block_bytes) const {
  std::vector<char> ok(m.blocks.size());
  ParallelFor(m.blocks.size(), CopyThreads(m.blocks.size(), block_bytes),
              [&](size_t i) { ok[i] = BlockChecksum(m.blocks[i], block_bytes) == m.checksums[i]; });
  for (size_t i = 0; i < ok.size(); ++i) {
    if (!ok[i]) {
      spdlog::warn("store block {} of a mapped prefix failed its checksum; treated as a miss", i);
      return i;
    }
  }
  return ok.size();
}

bool StoreClient::Impl::Unmap(MappedPrefix* m) {
  absl::MutexLock lock(&mu_);
  bool held = true;
  for (const auto& [node, lease] : m->leases) held &= ReleaseLease(nodes_[node].get(), lease);
  *m = MappedPrefix();
  return held;
}

std::vector<MappedPool> StoreClient::Impl::MappedPools() {
  absl::MutexLock lock(&mu_);
  std::vector<MappedPool> out;
  for (auto& n : nodes_) {
    if (!Available(n.get())) continue;
    if (absl::Status st = Connect(n.get(), 0); !st.ok()) {
      MarkDown(n.get(), st);
      continue;
    }
    if (n->mapped != nullptr) {
      out.push_back({n->mapped, static_cast<size_t>(n->info.slot_bytes() * n->info.slot_count())});
    }
  }
  return out;
}

std::vector<StoreNodeInfo> StoreClient::Impl::Nodes() {
  absl::MutexLock lock(&mu_);
  std::vector<StoreNodeInfo> out;
  for (auto& n : nodes_) {
    StoreNodeInfo info;
    info.address = n->address;
    absl::Status st = Connect(n.get(), 0);
    info.connected = st.ok();
    if (st.ok()) {
      info.incarnation = n->info.incarnation();
      info.slot_bytes = n->info.slot_bytes();
      info.slot_count = n->info.slot_count();
      info.ucx_memory_types.assign(n->info.ucx_memory_types().begin(),
                                   n->info.ucx_memory_types().end());
      info.cuda_memory_supported = n->info.cuda_memory_supported();
      info.spill_enabled = n->info.spill_enabled();
      info.ucx_lanes = n->ep->Describe();
      info.pool_mapped = n->mapped != nullptr;
    }
    out.push_back(std::move(info));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Create(
    const StoreClientOptions& options) {
  if (options.stores.empty()) return absl::InvalidArgumentError("no store addresses given");
  auto impl = std::make_unique<Impl>(options);
  KVTIER_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<StoreClient>(new StoreClient(std::move(impl)));
}

StoreClient::StoreClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StoreClient::~StoreClient() = default;

absl::StatusOr<size_t> StoreClient::Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys) {
  return impl_->Lookup(ns, keys);
}

absl::StatusOr<PutResult> StoreClient::Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                           absl::Span<const void* const> blocks,
                                           size_t block_bytes) {
  return impl_->Put(ns, keys, blocks, block_bytes);
}

absl::StatusOr<size_t> StoreClient::Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                        absl::Span<void* const> buffers, size_t block_bytes) {
  return impl_->Get(ns, keys, buffers, block_bytes);
}

std::vector<StoreNodeInfo> StoreClient::Nodes() { return impl_->Nodes(); }

absl::StatusOr<MappedPrefix> StoreClient::MapPrefix(const NamespaceId& ns,
                                                    absl::Span<const BlockKey> keys,
                                                    size_t block_bytes) {
  return impl_->MapPrefix(ns, keys, block_bytes);
}

size_t StoreClient::VerifyMapped(const MappedPrefix& m, size_t block_bytes) const {
  return impl_->VerifyMapped(m, block_bytes);
}

bool StoreClient::Unmap(MappedPrefix* m) { return impl_->Unmap(m); }

std::vector<MappedPool> StoreClient::MappedPools() { return impl_->MappedPools(); }

}  // namespace kvtier
