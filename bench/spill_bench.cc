#include "bench/spill_bench.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "common/status_macros.h"
#include "common/synthetic_block.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kvtier::bench {
namespace {

using json = nlohmann::json;

// The store's pool, in batches (every put evicts once it is full), and the pause between two
// timed control calls.
constexpr uint32_t kSpillPoolBatches = 2;
constexpr absl::Duration kSpillProbePause = absl::Microseconds(500);

struct SpillRun {
  double reserve_p50_us = 0, reserve_p99_us = 0, lookup_p50_us = 0, lookup_p99_us = 0;
  double put_gbps = 0;
  uint64_t probes = 0, spill_writes = 0, spills = 0, evictions = 0;
};

// One store (spill on or off) with a pool of kSpillPoolBatches batches: a writer thread puts
// chains of new keys as fast as it can (each Reserve evicts, and with spill on hands blocks to
// the spiller), while this thread times Reserve and Lookup calls straight over gRPC, both of
// the writer's latest chain: both take the index lock the writer's Reserve and Commit take.
// The probe's Reserve finds the block stored and takes no slot: reserving new keys and
// aborting them would drain the pool into the slot quarantine (docs/store-protocol.md) within
// a second, and the writer would store nothing.
absl::StatusOr<SpillRun> MeasureSpillRun(const StoreBenchOptions& o, const std::string& exe_dir,
                                         const std::string& dir, int spill_wait_ms) {
  const bool spill = spill_wait_ms >= 0;
  const std::string name = absl::StrCat("store-spill", spill_wait_ms);
  KVTIER_ASSIGN_OR_RETURN(
      StoreProcess store,
      SpawnStore(exe_dir, dir, name, uint64_t{kSpillPoolBatches} * o.batch * o.block_bytes,
                 o.block_bytes, spill ? dir + "/" + name : "",
                 {absl::StrCat("--spill-wait-ms=", std::max(spill_wait_ms, 0))}));
  KVTIER_RETURN_IF_ERROR(store.AwaitReady());
  NamespaceParams np;
  np.tenant_salt = absl::StrCat("kvtier-bench-spill/", getpid(), "/", MonoNowNs());
  const NamespaceId ns = ComputeNamespace(np);
  const std::string ns_bytes(KeyBytes(ns));

  StoreClientOptions co;
  co.stores = {store.address()};
  co.tls.plaintext = true;  // kvtier-bench talks plain text to its stores (docs/security.md)
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<StoreClient> client, StoreClient::Create(co));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> latest{0}, put_bytes{0};
  absl::Status writer_status;
  std::thread writer([&] {
    std::vector<std::vector<uint8_t>> data(o.batch, std::vector<uint8_t>(o.block_bytes));
    for (uint64_t seq = 1; !stop.load(); ++seq) {
      std::vector<BlockKey> keys;
      std::vector<const void*> src;
      for (uint32_t j = 0; j < o.batch; ++j) {
        keys.push_back(MakeKey(1, seq, j));
        FillSyntheticBlock(keys[j], data[j].data(), o.block_bytes);
        src.push_back(data[j].data());
      }
      auto r = client->Put(ns, keys, ChainParents(ns, keys), src, o.block_bytes);
      if (!r.ok()) {
        writer_status = r.status();
        return;
      }
      put_bytes += uint64_t{r->stored} * o.block_bytes;
      latest = seq;
    }
  });

  auto stub = v1::CacheStore::NewStub(
      grpc::CreateChannel(store.address(), grpc::InsecureChannelCredentials()));
  auto call = [&](auto method, const auto& req, auto* resp) -> absl::StatusOr<double> {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const uint64_t t0 = MonoNowNs();
    grpc::Status st = (stub.get()->*method)(&ctx, req, resp);
    if (!st.ok()) return absl::UnavailableError(st.error_message());
    return (MonoNowNs() - t0) / 1e3;
  };
  std::vector<double> reserve_us, lookup_us;
  const absl::Time start = absl::Now(), end = start + absl::Seconds(o.seconds);
  absl::Status probe_status;
  // The first chain is stored before the probes start (they reserve its keys).
  while (latest.load() == 0 && writer_status.ok() && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  while (absl::Now() < end && probe_status.ok()) {
    v1::ReserveRequest rq;
    rq.set_namespace_id(ns_bytes);
    rq.add_keys(std::string(KeyBytes(MakeKey(1, latest.load(), 0))));
    rq.set_block_bytes(o.block_bytes);
    v1::ReserveResponse rr;
    absl::StatusOr<double> us = call(&v1::CacheStore::Stub::Reserve, rq, &rr);
    if (!us.ok()) {
      probe_status = us.status();
      break;
    }
    reserve_us.push_back(*us);
    if (rr.reservation_id() != 0) {  // evicted meanwhile (rare): give the slot back
      v1::AbortRequest ar;
      ar.set_reservation_id(rr.reservation_id());
      v1::AbortResponse aresp;
      probe_status = call(&v1::CacheStore::Stub::Abort, ar, &aresp).status();
    }
    v1::LookupRequest lq;
    lq.set_namespace_id(ns_bytes);
    for (uint32_t j = 0; j < o.batch; ++j) {
      lq.add_keys(std::string(KeyBytes(MakeKey(1, latest.load(), j))));
    }
    v1::LookupResponse lr;
    us = call(&v1::CacheStore::Stub::Lookup, lq, &lr);
    if (!us.ok()) {
      probe_status = us.status();
      break;
    }
    lookup_us.push_back(*us);
    absl::SleepFor(kSpillProbePause);
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  stop = true;
  writer.join();
  KVTIER_RETURN_IF_ERROR(writer_status);
  KVTIER_RETURN_IF_ERROR(probe_status);

  SpillRun run;
  run.probes = reserve_us.size();
  run.reserve_p50_us = Percentile(reserve_us, 50);
  run.reserve_p99_us = Percentile(reserve_us, 99);
  run.lookup_p50_us = Percentile(lookup_us, 50);
  run.lookup_p99_us = Percentile(lookup_us, 99);
  run.put_gbps = put_bytes.load() / seconds / 1e9;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StatsResponse st;
  if (stub->Stats(&ctx, v1::StatsRequest(), &st).ok()) {
    run.spills = st.spills();
    run.evictions = st.evictions();
  }
  return run;
}

}  // namespace

absl::Status RunSpillBench(const StoreBenchOptions& o, const std::string& exe_dir,
                           const std::string& dir) {
  // Spill off; on (the default spill_wait_ms 0: eviction drops a block the spiller has not
  // written yet, never waiting for the disk); on with evictions waiting up to 20 ms for it.
  struct Mode {
    const char* name;
    int spill_wait_ms;
    SpillRun run;
  };
  Mode modes[] = {{"off", -1, {}}, {"on", 0, {}}, {"on+wait", 20, {}}};
  for (Mode& m : modes) {
    spdlog::info("spill {}: pool of {} x {} blocks, a writer putting new chains for {:.0f} s",
                 m.name, kSpillPoolBatches * o.batch, HumanBytes(o.block_bytes), o.seconds);
    KVTIER_ASSIGN_OR_RETURN(m.run, MeasureSpillRun(o, exe_dir, dir, m.spill_wait_ms));
  }
  std::FILE* out = o.json ? stderr : ResultsFile();
  std::fprintf(out, "control calls while every put evicts (pool %u x %s, batch %u, %.0f s)\n",
               kSpillPoolBatches * o.batch, HumanBytes(o.block_bytes).c_str(), o.batch, o.seconds);
  std::fprintf(out, "%-9s %12s %12s %12s %12s %9s %8s %10s %10s\n", "spill", "reserve p50",
               "reserve p99", "lookup p50", "lookup p99", "put GB/s", "probes", "to disk",
               "dropped");
  for (const Mode& m : modes) {
    const SpillRun& r = m.run;
    std::fprintf(out, "%-9s %10.0fus %10.0fus %10.0fus %10.0fus %9.2f %8llu %10llu %10llu\n",
                 m.name, r.reserve_p50_us, r.reserve_p99_us, r.lookup_p50_us, r.lookup_p99_us,
                 r.put_gbps, static_cast<unsigned long long>(r.probes),
                 static_cast<unsigned long long>(r.spills),
                 static_cast<unsigned long long>(r.evictions));
  }
  // The target (docs/BENCHMARKS.md): p99 with spill at most twice p99 without, eviction not
  // waiting for the disk.
  const SpillRun &off = modes[0].run, &on = modes[1].run;
  const bool reserve_ok = on.reserve_p99_us <= 2 * off.reserve_p99_us;
  const bool lookup_ok = on.lookup_p99_us <= 2 * off.lookup_p99_us;
  std::fprintf(out,
               "target p99 with spill (on) <= 2 x without: reserve %s (%.2fx), lookup %s "
               "(%.2fx)\n",
               reserve_ok ? "met" : "MISSED", on.reserve_p99_us / off.reserve_p99_us,
               lookup_ok ? "met" : "MISSED", on.lookup_p99_us / off.lookup_p99_us);
  if (o.json) {
    json j;
    for (const Mode& m : modes) {
      const SpillRun& r = m.run;
      j[m.name] = {{"reserve_p50_us", r.reserve_p50_us},
                   {"reserve_p99_us", r.reserve_p99_us},
                   {"lookup_p50_us", r.lookup_p50_us},
                   {"lookup_p99_us", r.lookup_p99_us},
                   {"put_gbps", r.put_gbps},
                   {"probes", r.probes},
                   {"spills", r.spills},
                   {"evictions", r.evictions}};
    }
    j["all_targets_met"] = reserve_ok && lookup_ok;
    std::fprintf(ResultsFile(), "%s\n", j.dump().c_str());
    std::fflush(ResultsFile());
  }
  return absl::OkStatus();
}

}  // namespace kvtier::bench
