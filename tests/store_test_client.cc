// kvtier-store-test-client: a client process for the multi-process store tests.
//
//   hammer --store A --key-seed S --keys N --block-bytes B --rounds R [--fresh-keys] [--read-only]
//       Puts N chained blocks (bytes derived from each key) and Gets them back, R rounds,
//       checking every fetched byte. --fresh-keys uses new keys each round (eviction pressure);
//       --read-only stores once, then only reads. Exit 0: every fetched block was exact.
//   stall-put --store A --keys N --block-bytes B --marker F
//       Reserves N blocks, writes half of the first one, creates F, then sleeps (to be killed).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "CLI/CLI.hpp"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/parse_bytes.h"
#include "common/synthetic_block.h"
#include "kvtier/store_client.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "spdlog/spdlog.h"
#include "tests/test_keys.h"
#include "transport/ucx.h"

namespace kvtier {
namespace {

using testing::TestKeys;
using testing::TestNamespace;

int Hammer(const std::string& store, uint32_t seed, uint32_t n, size_t bytes, int rounds,
           bool fresh, bool read_only) {
  StoreClientOptions o;
  o.stores = {store};
  o.tls.plaintext = true;  // the test stores serve plain text
  auto c = StoreClient::Create(o);
  if (!c.ok()) {
    std::fprintf(stderr, "client: %s\n", c.status().ToString().c_str());
    return 2;
  }
  std::vector<std::vector<uint8_t>> bufs(n, std::vector<uint8_t>(bytes));
  std::vector<void*> dst(n);
  std::vector<const void*> src(n);
  for (uint32_t i = 0; i < n; ++i) src[i] = dst[i] = bufs[i].data();
  uint64_t fetched = 0, stored = 0, present = 0;
  for (int r = 0; r < rounds; ++r) {
    std::vector<BlockKey> keys = TestKeys(fresh ? seed * 100000 + r : seed, n);
    if (!read_only || r == 0) {
      for (uint32_t i = 0; i < n; ++i) FillSyntheticBlock(keys[i], bufs[i].data(), bytes);
      auto put = (*c)->Put(TestNamespace(), keys, ChainParents(TestNamespace(), keys), src, bytes);
      if (!put.ok()) {
        std::fprintf(stderr, "put: %s\n", put.status().ToString().c_str());
        return 2;
      }
      stored += put->stored;
      present += put->present;
    }
    for (auto& b : bufs) std::fill(b.begin(), b.end(), 0xAB);
    auto got = (*c)->Get(TestNamespace(), keys, dst, bytes);
    if (!got.ok()) {
      std::fprintf(stderr, "get: %s\n", got.status().ToString().c_str());
      return 2;
    }
    for (size_t i = 0; i < *got; ++i) {
      if (!IsSyntheticBlock(keys[i], bufs[i].data(), bytes)) {
        std::fprintf(stderr, "round %d: block %zu has wrong bytes\n", r, i);
        return 1;
      }
    }
    fetched += *got;
  }
  std::printf("{\"fetched\":%llu,\"stored\":%llu,\"present\":%llu}\n",
              static_cast<unsigned long long>(fetched), static_cast<unsigned long long>(stored),
              static_cast<unsigned long long>(present));
  return 0;
}

int StallPut(const std::string& store, uint32_t n, size_t bytes, const std::string& marker) {
  auto stub =
      v1::CacheStore::NewStub(grpc::CreateChannel(store, grpc::InsecureChannelCredentials()));
  grpc::ClientContext c1;
  v1::GetInfoResponse info;
  if (!stub->GetInfo(&c1, v1::GetInfoRequest(), &info).ok()) return 2;
  auto ctx = transport::UcxContext::Create();
  if (!ctx.ok()) return 2;
  auto worker = transport::UcxWorker::Create(ctx->get());
  if (!worker.ok()) return 2;
  auto ep = transport::Endpoint::Connect(worker->get(), info.ucx_worker_address());
  if (!ep.ok()) return 2;
  auto rkey = (*ep)->UnpackRkey(info.pool_rkey());
  if (!rkey.ok()) return 2;
  v1::ReserveRequest req;
  NamespaceId ns = TestNamespace();
  req.set_namespace_id(std::string(KeyBytes(ns)));
  for (const BlockKey& k : TestKeys(777, n)) req.add_keys(std::string(KeyBytes(k)));
  req.set_block_bytes(bytes);
  v1::ReserveResponse resv;
  grpc::ClientContext c2;
  if (!stub->Reserve(&c2, req, &resv).ok() || resv.reservation_id() == 0) return 2;
  std::vector<uint8_t> junk(bytes / 2, 0x5A);
  transport::RmaOp op{junk.data(), info.pool_base_address() + resv.offsets(0), junk.size()};
  if (!(*ep)->PutBatch(**rkey, {op}, absl::Now() + absl::Seconds(10)).ok()) return 2;
  std::ofstream(marker) << resv.reservation_id() << "\n";
  std::this_thread::sleep_for(std::chrono::seconds(60));
  return 0;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  kvtier::LogToStderr();
  CLI::App app{"kvtier-store-test-client"};
  app.require_subcommand(1);
  std::string store, bytes_text = "64KiB", marker;
  uint32_t seed = 1, keys = 8;
  int rounds = 10;
  bool fresh = false, read_only = false;
  CLI::App* hammer = app.add_subcommand("hammer");
  CLI::App* stall = app.add_subcommand("stall-put");
  for (CLI::App* sub : {hammer, stall}) {
    sub->add_option("--store", store)->required();
    sub->add_option("--keys", keys);
    sub->add_option("--block-bytes", bytes_text);
  }
  hammer->add_option("--key-seed", seed);
  hammer->add_option("--rounds", rounds);
  hammer->add_flag("--fresh-keys", fresh);
  hammer->add_flag("--read-only", read_only);
  stall->add_option("--marker", marker)->required();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  auto bytes = kvtier::ParseBytes(bytes_text);
  if (!bytes.ok()) return 2;
  if (*hammer) return kvtier::Hammer(store, seed, keys, *bytes, rounds, fresh, read_only);
  return kvtier::StallPut(store, keys, *bytes, marker);
}
