// The real StoreClient: places keys on nodes (rendezvous hashing) and merges the nodes' answers
// into one prefix or PutResult; each node's calls and transfers are a StoreNode's.
#include "kvtier/store_client.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cachestore/store_node.h"
#include "common/checksum.h"
#include "common/logging.h"
#include "common/parallel.h"
#include "common/status_macros.h"
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

size_t MappedPrefix::Verify() const {
  std::vector<char> ok(blocks_.size());
  ParallelFor(blocks_.size(), CopyThreads(verify_threads_, blocks_.size(), block_bytes_),
              [&](size_t i) { ok[i] = BlockChecksum(blocks_[i], block_bytes_) == checksums_[i]; });
  for (size_t i = 0; i < ok.size(); ++i) {
    if (!ok[i]) {
      spdlog::warn("store block {} of a mapped prefix failed its checksum; treated as a miss", i);
      return i;
    }
  }
  return ok.size();
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
    KVTIER_ASSIGN_OR_RETURN(ucx_, transport::UcxContext::Create());
    KVTIER_ASSIGN_OR_RETURN(worker_, transport::UcxWorker::Create(ucx_.get()));
    for (const std::string& addr : options_.stores) {
      nodes_.push_back(std::make_unique<StoreNode>(addr, worker_.get(), options_, copy_threads_));
      seeds_.push_back(XXH3_64bits(addr.data(), addr.size()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys) override;
  absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                absl::Span<const void* const> blocks, size_t block_bytes) override;
  absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                             absl::Span<void* const> buffers, size_t block_bytes) override;
  std::vector<StoreNodeInfo> Nodes() override;
  absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         size_t block_bytes) override;
  std::vector<MappedPool> MappedPools() override;

 private:
  // Rendezvous (highest random weight) hashing: each key goes to the node with the highest
  // score. One slice per node, in node order.
  std::vector<Slice> Partition(absl::Span<const BlockKey> keys) const {
    std::vector<Slice> slices(nodes_.size());
    for (size_t n = 0; n < nodes_.size(); ++n) slices[n].node = nodes_[n].get();
    for (size_t i = 0; i < keys.size(); ++i) {
      size_t best = 0;
      uint64_t best_score = 0;
      for (size_t n = 0; n < nodes_.size(); ++n) {
        const uint64_t s = XXH3_64bits_withSeed(keys[i].data(), keys[i].size(), seeds_[n]);
        if (n == 0 || s > best_score) {
          best = n;
          best_score = s;
        }
      }
      slices[best].index.push_back(i);
      slices[best].keys.push_back(keys[i]);
    }
    return slices;
  }

  // A lookup on every node of `slices`: (*resp)[n] is node n's answer and (*hits)[n] how many
  // of its slice's keys it holds, 0 when it failed.
  void LookupAll(const NamespaceId& ns, const std::vector<Slice>& slices, bool lease,
                 std::vector<v1::LookupResponse>* resp, std::vector<uint32_t>* hits)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    resp->assign(slices.size(), v1::LookupResponse());
    hits->assign(slices.size(), 0);
    for (size_t n = 0; n < slices.size(); ++n) {
      if (slices[n].keys.empty()) continue;
      absl::StatusOr<v1::LookupResponse> r = slices[n].node->Lookup(ns, slices[n].keys, lease);
      if (!r.ok()) continue;
      (*hits)[n] = r->hit_count();
      (*resp)[n] = std::move(*r);
    }
  }

  // Stores the keys of one slice; adds to *result. An error only for bad arguments.
  absl::Status PutSlice(const NamespaceId& ns, const Slice& s, absl::Span<const void* const> blocks,
                        size_t block_bytes, PutResult* result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StoreClientOptions options_;
  const int copy_threads_;
  std::unique_ptr<transport::UcxContext> ucx_;
  absl::Mutex mu_;
  std::unique_ptr<transport::UcxWorker> worker_ ABSL_GUARDED_BY(mu_);
  // The lists are fixed after Init; node state is under mu_.
  std::vector<std::unique_ptr<StoreNode>> nodes_;
  std::vector<uint64_t> seeds_;  // rendezvous seed of each node
};

absl::StatusOr<size_t> RemoteStoreClient::Lookup(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys) {
  if (keys.empty()) return 0;
  absl::MutexLock lock(&mu_);
  const std::vector<Slice> slices = Partition(keys);
  std::vector<v1::LookupResponse> resp;
  std::vector<uint32_t> hits;
  LookupAll(ns, slices, /*lease=*/false, &resp, &hits);
  return GlobalPrefix(keys.size(), slices, hits);
}

absl::Status RemoteStoreClient::PutSlice(const NamespaceId& ns, const Slice& s,
                                         absl::Span<const void* const> blocks, size_t block_bytes,
                                         PutResult* result) {
  StoreNode* n = s.node;
  const size_t total = s.keys.size();
  if (!n->Connect().ok()) {
    result->skipped += total;
    return absl::OkStatus();
  }
  if (block_bytes > n->slot_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("block_bytes ", block_bytes,
                                                   " exceeds the slot size ", n->slot_bytes(),
                                                   " of ", n->address()));
  }
  const size_t chunk = n->max_batch_keys();
  // Chunks of at most max_batch_keys; each key's parent is its nearest ancestor on this node.
  for (size_t start = 0; start < total; start += chunk) {
    const size_t end = std::min(total, start + chunk);
    absl::StatusOr<v1::ReserveResponse> resv =
        n->Reserve(ns, start > 0 ? &s.keys[start - 1] : nullptr,
                   absl::MakeConstSpan(s.keys).subspan(start, end - start), block_bytes);
    if (!resv.ok()) {
      if (absl::IsInvalidArgument(resv.status())) return resv.status();
      result->skipped += total - start;
      return absl::OkStatus();
    }
    std::vector<const void*> reserved;
    std::vector<uint64_t> offsets;
    for (size_t j = start; j < end; ++j) {
      const int k = static_cast<int>(j - start);
      switch (resv->outcomes(k)) {
        case v1::RESERVE_OUTCOME_RESERVED:
          reserved.push_back(blocks[s.index[j]]);
          offsets.push_back(resv->offsets(k));
          break;
        case v1::RESERVE_OUTCOME_PRESENT:
          ++result->present;
          break;
        default:
          ++result->skipped;
      }
    }
    if (reserved.empty()) continue;
    absl::StatusOr<std::vector<uint64_t>> sums =
        n->Write(resv->incarnation(), reserved, offsets, block_bytes);
    if (!sums.ok()) n->Abort(resv->reservation_id());
    absl::StatusOr<v1::CommitResponse> done =
        sums.ok() ? n->Commit(resv->reservation_id(), *sums) : sums.status();
    if (!done.ok()) {
      result->skipped += reserved.size() + (total - end);
      return absl::OkStatus();
    }
    result->stored += done->committed();
    result->skipped += done->rejected_keys_size();
  }
  return absl::OkStatus();
}

absl::StatusOr<PutResult> RemoteStoreClient::Put(const NamespaceId& ns,
                                                 absl::Span<const BlockKey> keys,
                                                 absl::Span<const void* const> blocks,
                                                 size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, blocks.size(), block_bytes));
  PutResult result;
  if (keys.empty()) return result;
  absl::MutexLock lock(&mu_);
  for (const Slice& s : Partition(keys)) {
    if (!s.keys.empty()) KVTIER_RETURN_IF_ERROR(PutSlice(ns, s, blocks, block_bytes, &result));
  }
  return result;
}

absl::StatusOr<size_t> RemoteStoreClient::Get(const NamespaceId& ns,
                                              absl::Span<const BlockKey> keys,
                                              absl::Span<void* const> buffers, size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, buffers.size(), block_bytes));
  if (keys.empty()) return 0;
  absl::MutexLock lock(&mu_);
  const std::vector<Slice> slices = Partition(keys);
  std::vector<v1::LookupResponse> resp;
  std::vector<uint32_t> hits;
  LookupAll(ns, slices, /*lease=*/true, &resp, &hits);
  size_t prefix = GlobalPrefix(keys.size(), slices, hits);

  // Move the bytes of the prefix, node by node; a failure shortens the prefix.
  for (size_t n = 0; n < slices.size() && prefix > 0; ++n) {
    const Slice& s = slices[n];
    std::vector<uint64_t> offsets;
    std::vector<void*> dst;
    for (size_t j = 0; j < hits[n] && s.index[j] < prefix; ++j) {
      const v1::BlockLocation& b = resp[n].blocks(static_cast<int>(j));
      if (b.size() != block_bytes) {  // a block of another shape is not ours to use
        prefix = s.index[j];
        break;
      }
      offsets.push_back(b.offset());
      dst.push_back(buffers[s.index[j]]);
    }
    if (offsets.empty()) continue;
    absl::StatusOr<std::vector<uint64_t>> sums =
        s.node->Read(resp[n].incarnation(), offsets, dst, block_bytes);
    if (!sums.ok()) {
      prefix = std::min(prefix, s.index[0]);
      continue;
    }
    for (size_t j = 0; j < sums->size() && s.index[j] < prefix; ++j) {
      if ((*sums)[j] != resp[n].blocks(static_cast<int>(j)).checksum()) {
        spdlog::warn("store {}: block {} failed its checksum after get; treated as a miss",
                     s.node->address(), KeyToHex(keys[s.index[j]]));
        prefix = s.index[j];
        break;
      }
    }
  }
  for (size_t n = 0; n < slices.size(); ++n) slices[n].node->Release(resp[n].lease_id());
  return prefix;
}

absl::StatusOr<MappedPrefix> RemoteStoreClient::MapPrefix(const NamespaceId& ns,
                                                          absl::Span<const BlockKey> keys,
                                                          size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys, keys.size(), block_bytes));
  if (keys.empty()) return MappedPrefix();
  absl::MutexLock lock(&mu_);
  const std::vector<Slice> slices = Partition(keys);
  std::vector<v1::LookupResponse> resp;
  std::vector<uint32_t> hits;
  LookupAll(ns, slices, /*lease=*/true, &resp, &hits);
  std::vector<std::pair<StoreNode*, uint64_t>> leases;
  for (size_t n = 0; n < slices.size(); ++n) {
    if (resp[n].lease_id() != 0) leases.emplace_back(slices[n].node, resp[n].lease_id());
  }
  const size_t stored = GlobalPrefix(keys.size(), slices, hits);
  // The prefix ends at the first block that is not in a mapped pool of the leased incarnation.
  size_t prefix = stored;
  std::vector<const uint8_t*> where(prefix, nullptr);
  std::vector<uint64_t> checksums(prefix, 0);
  for (size_t n = 0; n < slices.size(); ++n) {
    const Slice& s = slices[n];
    if (hits[n] == 0 || s.index[0] >= prefix) continue;
    const uint8_t* base = s.node->MappedBase(resp[n].incarnation());
    for (size_t j = 0; j < hits[n] && s.index[j] < prefix; ++j) {
      const v1::BlockLocation& b = resp[n].blocks(static_cast<int>(j));
      if (base == nullptr || b.size() != block_bytes) {
        prefix = s.index[j];
        break;
      }
      where[s.index[j]] = base + b.offset();
      checksums[s.index[j]] = b.checksum();
    }
  }
  where.resize(prefix);
  checksums.resize(prefix);
  return MappedPrefix(std::move(where), std::move(checksums), stored, block_bytes, copy_threads_,
                      [this, leases = std::move(leases)]() {
                        absl::MutexLock lock(&mu_);
                        bool held = true;
                        for (const auto& [node, id] : leases) held &= node->Release(id);
                        return held;
                      });
}

std::vector<MappedPool> RemoteStoreClient::MappedPools() {
  absl::MutexLock lock(&mu_);
  std::vector<MappedPool> out;
  for (auto& n : nodes_) {
    const MappedPool p = n->Pool();
    if (p.base != nullptr) out.push_back(p);
  }
  return out;
}

std::vector<StoreNodeInfo> RemoteStoreClient::Nodes() {
  absl::MutexLock lock(&mu_);
  std::vector<StoreNodeInfo> out;
  for (auto& n : nodes_) out.push_back(n->Describe());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Create(
    const StoreClientOptions& options) {
  if (options.stores.empty()) return absl::InvalidArgumentError("no store addresses given");
  auto client = std::make_unique<RemoteStoreClient>(options);
  KVTIER_RETURN_IF_ERROR(client->Init());
  return std::unique_ptr<StoreClient>(std::move(client));
}

}  // namespace kvtier
