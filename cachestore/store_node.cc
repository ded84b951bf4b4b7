#include "cachestore/store_node.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/grpc_status.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "common/parallel.h"
#include "common/status_macros.h"

namespace kvtier {

namespace {

// What a store that has not answered GetInfo yet is assumed to accept per call.
constexpr size_t kDefaultMaxBatchKeys = 4096;
// Most UCX lanes per node (StoreClientOptions::lanes is clamped to 1..this).
constexpr int kMaxLanes = 16;

}  // namespace

absl::Status CheckSlotRange(const v1::GetInfoResponse& info, uint64_t offset, uint64_t bytes) {
  const uint64_t slot = info.slot_bytes();
  if (slot == 0 || bytes == 0 || bytes > slot || offset % slot != 0 ||
      offset / slot >= info.slot_count()) {
    return absl::InternalError(absl::StrCat("store answered a block of ", bytes,
                                            " bytes at offset ", offset, ", outside its pool of ",
                                            info.slot_count(), " slots of ", slot, " bytes"));
  }
  return absl::OkStatus();
}

int CopyThreads(int max_threads, size_t blocks, size_t block_bytes) {
  return static_cast<int>(
      std::min<size_t>(std::max(max_threads, 1), blocks * block_bytes / (size_t{8} << 20) + 1));
}

StoreNode::StoreNode(std::string address, transport::UcxContext* ucx,
                     const StoreClientOptions& options,
                     const std::shared_ptr<grpc::ChannelCredentials>& creds, int copy_threads,
                     const UnmapFn* on_unmap)
    : address_(std::move(address)),
      ucx_(ucx),
      options_(options),
      copy_threads_(copy_threads),
      on_unmap_(on_unmap),
      lanes_(static_cast<size_t>(std::clamp(options.lanes, 1, kMaxLanes))) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  stub_ = v1::CacheStore::NewStub(grpc::CreateCustomChannel(address_, creds, args));
}

StoreNode::~StoreNode() = default;

bool StoreNode::available() const { return absl::Now() >= down_until_; }

size_t StoreNode::max_batch_keys() const {
  return info_.max_batch_keys() ? info_.max_batch_keys() : kDefaultMaxBatchKeys;
}

std::unique_ptr<grpc::ClientContext> StoreNode::Context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  return ctx;
}

void StoreNode::Disconnect() {
  // Whoever registered the pool (CUDA) lets go of it before its pages are unmapped.
  if (mapped_ != nullptr && on_unmap_ != nullptr && *on_unmap_) {
    (*on_unmap_)(MappedPool{mapped_, info_.slot_bytes() * info_.slot_count(), info_.incarnation()});
  }
  connected_.store(false, std::memory_order_relaxed);
  // The old connection, if any, may point at a dead or replaced process: close it forcibly.
  for (Lane& lane : lanes_) {
    if (lane.ep != nullptr) lane.ep->MarkFailed();
    lane.rkey.reset();
    lane.ep.reset();
  }
  mapped_ = nullptr;
}

void StoreNode::MarkDown(const absl::Status& why) {
  KVTIER_LOG_LIMITED(warn, "store {} unavailable for {}: {}", address_,
                     absl::FormatDuration(options_.retry_after), why.ToString());
  Disconnect();
  down_until_ = absl::Now() + options_.retry_after;
}

absl::Status StoreNode::Failed(absl::Status status) {
  if (absl::IsInvalidArgument(status)) {
    KVTIER_LOG_LIMITED(err, "store {} rejected a request: {}", address_,
                       std::string(status.message()));
  } else {
    MarkDown(status);
  }
  return status;
}

absl::Status StoreNode::DoConnect(uint64_t incarnation) {
  const auto live = [](const Lane& l) { return l.ep != nullptr && !l.ep->failed(); };
  if (std::all_of(lanes_.begin(), lanes_.begin() + LanesInUse(), live) &&
      (incarnation == 0 || incarnation == info_.incarnation())) {
    return absl::OkStatus();
  }
  Disconnect();
  v1::GetInfoResponse info;
  KVTIER_RETURN_IF_ERROR(FromGrpc(stub_->GetInfo(Context().get(), v1::GetInfoRequest(), &info)));
  if (incarnation != 0 && info.incarnation() != incarnation) {
    return absl::UnavailableError("store restarted during the operation");
  }
  // The pool must be what its sizes say, with no overflow (offsets are checked against them).
  if (info.slot_bytes() == 0 || info.slot_count() == 0 ||
      info.slot_count() > info.pool_bytes() / info.slot_bytes() ||
      info.pool_base_address() > UINT64_MAX - info.pool_bytes()) {
    return absl::InternalError(absl::StrCat("store describes a bad pool: ", info.slot_count(),
                                            " slots of ", info.slot_bytes(), " bytes in ",
                                            info.pool_bytes()));
  }
  // Lane 0 first: when it maps the pool, the other lanes are not needed.
  for (size_t l = 0; l < lanes_.size() && (l == 0 || mapped_ == nullptr); ++l) {
    Lane& lane = lanes_[l];
    if (lane.worker == nullptr) {
      KVTIER_ASSIGN_OR_RETURN(lane.worker, transport::UcxWorker::Create(ucx_));
    }
    KVTIER_ASSIGN_OR_RETURN(
        lane.ep, transport::Endpoint::Connect(lane.worker.get(), info.ucx_worker_address()));
    KVTIER_ASSIGN_OR_RETURN(lane.rkey, lane.ep->UnpackRkey(info.pool_rkey()));
    if (l == 0 && options_.map_same_host_pool) {
      mapped_ = static_cast<uint8_t*>(lane.rkey->LocalPointer(info.pool_base_address()));
    }
  }
  info_ = std::move(info);
  connected_.store(true, std::memory_order_relaxed);
  spdlog::debug("connected to store {} (incarnation {:x})", address_, info_.incarnation());
  return absl::OkStatus();
}

absl::Status StoreNode::ConnectTo(uint64_t incarnation) {
  if (!available()) return absl::UnavailableError(absl::StrCat("store ", address_, " is down"));
  absl::Status st = DoConnect(incarnation);
  if (!st.ok()) MarkDown(st);
  return st;
}

absl::Status StoreNode::Connect() { return ConnectTo(0); }

StoreNodeInfo StoreNode::Describe() {
  StoreNodeInfo out;
  out.address = address_;
  out.connected = DoConnect(0).ok();
  if (out.connected) {
    out.incarnation = info_.incarnation();
    out.slot_bytes = info_.slot_bytes();
    out.slot_count = info_.slot_count();
    out.ucx_memory_types.assign(info_.ucx_memory_types().begin(), info_.ucx_memory_types().end());
    out.cuda_memory_supported = info_.cuda_memory_supported();
    out.spill_enabled = info_.spill_enabled();
    out.ucx_lanes = lanes_[0].ep->Describe();
    if (LanesInUse() > 1) out.ucx_lanes += absl::StrCat("(and ", LanesInUse() - 1, " more such)\n");
    out.pool_mapped = mapped_ != nullptr;
  }
  return out;
}

MappedPool StoreNode::Pool() {
  if (!Connect().ok() || mapped_ == nullptr) return {};
  return {mapped_, static_cast<size_t>(info_.slot_bytes() * info_.slot_count()),
          info_.incarnation()};
}

absl::StatusOr<NodeLookup> StoreNode::Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                             bool lease) {
  if (!available()) return absl::UnavailableError(absl::StrCat("store ", address_, " is down"));
  NodeLookup out;
  // One call per max_batch_keys keys (the store refuses more): a call that does not hit all of
  // its keys ends the prefix, and so does any failure after the first call.
  for (size_t start = 0; start < keys.size();) {
    const absl::Span<const BlockKey> part =
        keys.subspan(start, std::min(keys.size() - start, max_batch_keys()));
    v1::LookupRequest req;
    req.set_namespace_id(std::string(KeyBytes(ns)));
    for (const BlockKey& k : part) req.add_keys(std::string(KeyBytes(k)));
    req.set_lease(lease);
    v1::LookupResponse resp;
    absl::Status st = FromGrpc(stub_->Lookup(Context().get(), req, &resp));
    if (st.ok() && (resp.hit_count() > part.size() ||
                    (lease && resp.blocks_size() != static_cast<int>(resp.hit_count())))) {
      st = absl::InternalError("malformed lookup response");
    }
    if (!st.ok()) {
      st = Failed(std::move(st));
      if (start == 0) return st;
      return out;
    }
    if (start > 0 && resp.incarnation() != out.incarnation) {  // restarted in between
      Release(resp.lease_id());
      return out;
    }
    out.incarnation = resp.incarnation();
    out.hits += resp.hit_count();
    if (resp.lease_id() != 0) out.lease_ids.push_back(resp.lease_id());
    for (v1::BlockLocation& b : *resp.mutable_blocks()) out.blocks.push_back(std::move(b));
    if (resp.hit_count() < part.size()) break;
    start += part.size();
  }
  return out;
}

absl::StatusOr<v1::ReserveResponse> StoreNode::Reserve(const NamespaceId& ns,
                                                       const BlockKey* parent,
                                                       absl::Span<const BlockKey> keys,
                                                       size_t block_bytes) {
  v1::ReserveRequest req;
  req.set_namespace_id(std::string(KeyBytes(ns)));
  if (parent != nullptr) req.set_parent_key(std::string(KeyBytes(*parent)));
  for (const BlockKey& k : keys) req.add_keys(std::string(KeyBytes(k)));
  req.set_block_bytes(block_bytes);
  v1::ReserveResponse resp;
  absl::Status st = FromGrpc(stub_->Reserve(Context().get(), req, &resp));
  const int n = static_cast<int>(keys.size());
  if (st.ok() && (resp.outcomes_size() != n || resp.offsets_size() != n)) {
    st = absl::InternalError("malformed reserve response");
  }
  if (!st.ok()) return Failed(st);
  return resp;  // Write checks the offsets against the pool it writes to
}

absl::StatusOr<v1::CommitResponse> StoreNode::Commit(uint64_t reservation_id,
                                                     absl::Span<const uint64_t> checksums) {
  v1::CommitRequest req;
  req.set_reservation_id(reservation_id);
  for (uint64_t sum : checksums) req.add_checksums(sum);
  v1::CommitResponse resp;
  absl::Status st = FromGrpc(stub_->Commit(Context().get(), req, &resp));
  if (!st.ok()) return Failed(st);
  if (resp.rejected_keys_size() > 0) {
    KVTIER_LOG_LIMITED(warn, "store {} rejected {} blocks on checksum", address_,
                       resp.rejected_keys_size());
  }
  return resp;
}

void StoreNode::Abort(uint64_t reservation_id) {
  v1::AbortRequest req;
  req.set_reservation_id(reservation_id);
  v1::AbortResponse resp;
  (void)stub_->Abort(Context().get(), req, &resp);  // else the reservation times out
}

bool StoreNode::Release(uint64_t lease_id) {
  if (lease_id == 0) return true;
  if (!available()) return false;  // a stalled store would cost rpc_timeout per lease
  v1::ReleaseRequest req;
  req.set_lease_id(lease_id);
  v1::ReleaseResponse resp;
  grpc::Status s = stub_->Release(Context().get(), req, &resp);
  if (!s.ok()) spdlog::debug("release on {}: {}", address_, s.error_message());
  return s.ok();
}

absl::Status StoreNode::CheckOffsets(absl::Span<const uint64_t> offsets, size_t block_bytes) {
  for (uint64_t offset : offsets) {
    if (absl::Status st = CheckSlotRange(info_, offset, block_bytes); !st.ok()) {
      MarkDown(st);
      return st;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint64_t>> StoreNode::Write(uint64_t incarnation,
                                                       absl::Span<const void* const> blocks,
                                                       absl::Span<const uint64_t> offsets,
                                                       size_t block_bytes,
                                                       absl::Time reserved_until) {
  KVTIER_RETURN_IF_ERROR(ConnectTo(incarnation));
  KVTIER_RETURN_IF_ERROR(CheckOffsets(offsets, block_bytes));
  std::vector<uint64_t> sums(blocks.size());
  if (mapped_ != nullptr) {  // same host: hash, stream the copy
    // A block copied after the reservation's deadline could land in a slot that the store has
    // reaped and given to another block: each block checks the deadline before its copy.
    std::vector<char> late(blocks.size(), 0);
    ParallelFor(blocks.size(), CopyThreads(copy_threads_, blocks.size(), block_bytes),
                [&](size_t i) {
                  if (absl::Now() >= reserved_until) {
                    late[i] = 1;
                    return;
                  }
                  sums[i] = ChecksumAndStreamCopy(mapped_ + offsets[i], blocks[i], block_bytes);
                });
    if (std::find(late.begin(), late.end(), 1) != late.end()) {
      return absl::DeadlineExceededError("the reservation expired before its blocks were copied");
    }
    return sums;
  }
  std::vector<transport::RmaOp> ops(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    ops[i] = {const_cast<void*>(blocks[i]), info_.pool_base_address() + offsets[i], block_bytes};
  }
  // On failure every lane's endpoint is closed before Transfer returns: no put of the batch can
  // land later, so the caller's Abort (sent after this) frees slots nothing writes to anymore.
  KVTIER_RETURN_IF_ERROR(
      Transfer(/*put=*/true, ops, std::min(TransferDeadline(), reserved_until), &sums));
  return sums;
}

absl::StatusOr<std::vector<uint64_t>> StoreNode::Read(uint64_t incarnation,
                                                      absl::Span<const uint64_t> offsets,
                                                      absl::Span<void* const> buffers,
                                                      size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(ConnectTo(incarnation));
  KVTIER_RETURN_IF_ERROR(CheckOffsets(offsets, block_bytes));
  std::vector<uint64_t> sums(buffers.size());
  if (mapped_ != nullptr) {  // same host: copy, hash while in cache
    ParallelFor(buffers.size(), CopyThreads(copy_threads_, buffers.size(), block_bytes),
                [&](size_t i) {
                  sums[i] = CopyAndChecksum(buffers[i], mapped_ + offsets[i], block_bytes);
                });
    return sums;
  }
  std::vector<transport::RmaOp> ops(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    ops[i] = {buffers[i], info_.pool_base_address() + offsets[i], block_bytes};
  }
  KVTIER_RETURN_IF_ERROR(Transfer(/*put=*/false, ops, TransferDeadline(), &sums));
  return sums;
}

absl::Status StoreNode::Transfer(bool put, absl::Span<const transport::RmaOp> ops,
                                 absl::Time deadline, std::vector<uint64_t>* sums) {
  // Lane l moves blocks [first(l), first(l + 1)): consecutive blocks, shares differing by one.
  const size_t lanes = std::min(LanesInUse(), ops.size());
  auto first = [&](size_t l) { return l * ops.size() / lanes; };
  std::vector<absl::Status> status(lanes);
  ParallelFor(lanes, static_cast<int>(lanes), [&](size_t l) {
    const absl::Span<const transport::RmaOp> mine = ops.subspan(first(l), first(l + 1) - first(l));
    auto hash = [&] {
      for (size_t i = 0; i < mine.size(); ++i) {
        (*sums)[first(l) + i] = BlockChecksum(mine[i].local, mine[i].size);
      }
    };
    Lane& lane = lanes_[l];
    if (put) {
      hash();
      status[l] = lane.ep->PutBatch(*lane.rkey, mine, deadline);
    } else {
      status[l] = lane.ep->GetBatch(*lane.rkey, mine, deadline);
      if (status[l].ok()) hash();
    }
  });
  // A failed lane has force-closed its endpoint; the others have completed or failed too.
  for (const absl::Status& st : status) {
    if (!st.ok()) {
      MarkDown(st);
      return st;
    }
  }
  return absl::OkStatus();
}

const uint8_t* StoreNode::MappedSlot(uint64_t incarnation, uint64_t offset, size_t bytes) {
  if (!ConnectTo(incarnation).ok() || mapped_ == nullptr) return nullptr;
  if (absl::Status st = CheckSlotRange(info_, offset, bytes); !st.ok()) {
    MarkDown(st);
    return nullptr;
  }
  return mapped_ + offset;
}

}  // namespace kvtier
