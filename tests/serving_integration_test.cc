// Disaggregated serving end to end (docs/architecture.md, "The path of a request"): a real
// kvtier-store, kvtier-prefill and kvtier-decode on loopback with a generated tiny model, driven
// over gRPC. Every generation is compared with an in-process full recompute (engine::Generate on
// the CPU backend): reused blocks, from the decode worker's own cache or from the store, must give
// the same tokens to the bit, and so must every failure of the tier.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/process.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/testing/model_writer.h"
#include "engine/testing/test_util.h"
#include "gtest/gtest.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "kvtier/v1/worker.grpc.pb.h"
#include "tests/test_util.h"

namespace kvtier {
namespace {

using testing::MakeTempDir;

constexpr uint64_t kModelSeed = 11;

std::vector<TokenId> Prompt(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<TokenId> out(n);
  for (TokenId& t : out) t = static_cast<TokenId>(3 + rng() % 4000);
  return out;
}

std::vector<TokenId> Concat(std::vector<TokenId> a, const std::vector<TokenId>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Generation {
  grpc::Status status;
  std::vector<TokenId> tokens;
  uint32_t prompt_tokens = 0;
  uint32_t cached_tokens = 0;
  std::string finish_reason;
};

class ServingIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = MakeTempDir("serving_" + name);
    model_dir_ = dir_ + "/model";
    const absl::Status st = testing::WriteRandomModel(*engine::PresetConfig("tiny"), kModelSeed,
                                                      engine::DType::kF32, model_dir_);
    ASSERT_TRUE(st.ok()) << st;
    engine::EngineOptions eo;
    eo.kv_cache_bytes = int64_t{16} << 20;
    eo.num_threads = 1;
    auto e = engine::Engine::Create(model_dir_, eo);
    ASSERT_TRUE(e.ok()) << e.status();
    reference_ = std::move(*e);
    ref_alloc_ = std::make_unique<engine::PageAllocator>(reference_->num_pages());
  }
  void TearDown() override {
    if (!HasFailure()) {
      std::filesystem::remove_all(dir_);
    } else {
      for (const char* log : {"store.log", "prefill.log", "decode.log"}) {
        std::ifstream f(dir_ + "/" + log);
        if (f) std::cerr << "---- " << log << "\n" << f.rdbuf() << "\n";
      }
    }
  }

  // `o`'s pool and slot sizes are set here.
  void StartStore(StoreProcessOptions o = {}) {
    o.pool_bytes = "16MiB";
    o.slot_bytes = "64KiB";  // one tiny fp32 block: 4 layers x 2 x 2 heads x 16 x 64 x 4 B
    o.env.insert(env_.begin(), env_.end());
    auto s = StoreProcess::Start(dir_, o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::make_unique<StoreProcess>(std::move(*s));
  }

  std::vector<std::string> WorkerArgs() const {
    std::vector<std::string> args = {"--model-dir=" + model_dir_,
                                     "--listen=127.0.0.1:0",
                                     "--threads=1",
                                     "--plaintext",
                                     "--kv-cache-bytes=16MiB",
                                     "--max-batch-tokens=64",
                                     "--max-batch-seqs=8",
                                     "--store-retry-after-ms=200"};
    if (store_ != nullptr) args.push_back("--store=" + store_->address());
    args.insert(args.end(), extra_worker_args_.begin(), extra_worker_args_.end());
    return args;
  }

  void StartPrefill() {
    auto p = ServerProcess::Start("kvtier-prefill", WorkerArgs(), dir_, "prefill", env_);
    ASSERT_TRUE(p.ok()) << p.status();
    prefill_ = std::make_unique<ServerProcess>(std::move(*p));
    prefill_stub_ = v1::PrefillWorker::NewStub(
        grpc::CreateChannel(prefill_->address(), grpc::InsecureChannelCredentials()));
  }

  void StartDecode() {
    auto d = ServerProcess::Start("kvtier-decode", WorkerArgs(), dir_, "decode", env_);
    ASSERT_TRUE(d.ok()) << d.status();
    decode_ = std::make_unique<ServerProcess>(std::move(*d));
    decode_stub_ = v1::DecodeWorker::NewStub(
        grpc::CreateChannel(decode_->address(), grpc::InsecureChannelCredentials()));
  }

  void StartAll() {
    StartStore();
    StartPrefill();
    StartDecode();
  }

  static void Deadline(grpc::ClientContext* ctx, int seconds = 30) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }

  grpc::Status Prefill(const std::vector<TokenId>& tokens, v1::PrefillResponse* resp) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::PrefillRequest req;
    req.set_request_id("prefill-test");
    for (TokenId t : tokens) req.add_tokens(t);
    return prefill_stub_->Prefill(&ctx, req, resp);
  }

  static v1::GenerateRequest Request(const std::vector<TokenId>& tokens, uint32_t max_tokens,
                                     bool use_cache = true) {
    v1::GenerateRequest req;
    req.set_request_id("generate-test");
    for (TokenId t : tokens) req.add_tokens(t);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.set_use_cache(use_cache);
    return req;
  }

  Generation Generate(const v1::GenerateRequest& req) {
    Generation g;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    auto reader = decode_stub_->Generate(&ctx, req);
    v1::GenerateResponse resp;
    bool first = true;
    while (reader->Read(&resp)) {
      EXPECT_EQ(resp.index(), 0u);
      if (first) {
        g.prompt_tokens = resp.prompt_tokens();
        g.cached_tokens = resp.cached_tokens();
        first = false;
      }
      g.tokens.insert(g.tokens.end(), resp.tokens().begin(), resp.tokens().end());
      if (!resp.finish_reason().empty()) g.finish_reason = resp.finish_reason();
    }
    g.status = reader->Finish();
    return g;
  }

  v1::WorkerInfo DecodeInfo() {
    grpc::ClientContext ctx;
    Deadline(&ctx, 10);
    v1::WorkerInfo info;
    EXPECT_TRUE(decode_stub_->GetWorkerInfo(&ctx, v1::WorkerInfoRequest(), &info).ok());
    return info;
  }
  v1::WorkerInfo PrefillInfo() {
    grpc::ClientContext ctx;
    Deadline(&ctx, 10);
    v1::WorkerInfo info;
    EXPECT_TRUE(prefill_stub_->GetWorkerInfo(&ctx, v1::WorkerInfoRequest(), &info).ok());
    return info;
  }

  // The full recompute: greedy engine::Generate in this process.
  std::vector<TokenId> Reference(const std::vector<TokenId>& prompt, int max_tokens) {
    engine::Sequence seq;
    seq.tokens.assign(prompt.begin(), prompt.end());
    engine::SamplingParams p;
    p.max_tokens = max_tokens;
    auto out = engine::Generate(*reference_, *ref_alloc_, seq, p);
    EXPECT_TRUE(out.ok()) << out.status();
    engine::ReleasePages(*ref_alloc_, seq);
    return out.ok() ? std::vector<TokenId>(out->begin(), out->end()) : std::vector<TokenId>{};
  }

  std::string dir_;
  std::string model_dir_;
  std::map<std::string, std::string> env_;      // of every process started
  std::vector<std::string> extra_worker_args_;  // more worker flags
  std::unique_ptr<engine::Engine> reference_;
  std::unique_ptr<engine::PageAllocator> ref_alloc_;
  std::unique_ptr<StoreProcess> store_;
  std::unique_ptr<ServerProcess> prefill_;
  std::unique_ptr<ServerProcess> decode_;
  std::unique_ptr<v1::PrefillWorker::Stub> prefill_stub_;
  std::unique_ptr<v1::DecodeWorker::Stub> decode_stub_;
};

TEST_F(ServingIntegrationTest, ConversationReusesBlocksAcrossWorkersAndRestarts) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  v1::WorkerInfo info = PrefillInfo();
  EXPECT_EQ(info.role(), "prefill");
  EXPECT_EQ(info.model(), "model");
  EXPECT_EQ(info.namespace_id().size(), 32u);
  EXPECT_EQ(info.block_tokens(), 16u);
  EXPECT_EQ(info.vocab_size(), 4096u);
  EXPECT_EQ(info.max_context(), 4096u);
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_EQ(info.total_pages(), 256u);
  EXPECT_TRUE(info.store_connected());
  v1::WorkerInfo dinfo = DecodeInfo();
  EXPECT_EQ(dinfo.role(), "decode");
  EXPECT_EQ(dinfo.namespace_id(), info.namespace_id());
  EXPECT_TRUE(dinfo.store_connected());

  // (1) Turn one: prefill stores the 6 full blocks, decode fetches them.
  const std::vector<TokenId> prompt = Prompt(100, 1);
  v1::PrefillResponse p;
  ASSERT_TRUE(Prefill(prompt, &p).ok());
  EXPECT_EQ(p.prompt_tokens(), 100u);
  EXPECT_EQ(p.cached_tokens(), 0u);
  EXPECT_EQ(p.computed_tokens(), 96u);
  EXPECT_EQ(p.stored_blocks(), 6u);
  EXPECT_GT(p.compute_ms(), 0.0);
  Generation g1 = Generate(Request(prompt, 20));
  ASSERT_TRUE(g1.status.ok()) << g1.status.error_message();
  EXPECT_EQ(g1.prompt_tokens, 100u);
  EXPECT_EQ(g1.cached_tokens, 96u);
  EXPECT_EQ(g1.finish_reason, "length");
  EXPECT_EQ(g1.tokens, Reference(prompt, 20));

  // Prefilling the same prompt again computes nothing.
  ASSERT_TRUE(Prefill(prompt, &p).ok());
  EXPECT_EQ(p.cached_tokens(), 96u);
  EXPECT_EQ(p.computed_tokens(), 0u);

  // (2) Turn two: the history plus 30 new tokens. The decode worker wrote back block 6
  // (positions 96..111, filled during generation), so the store holds blocks 0..6.
  const std::vector<TokenId> turn2 = Concat(Concat(prompt, g1.tokens), Prompt(30, 2));
  ASSERT_EQ(turn2.size(), 150u);
  ASSERT_TRUE(Prefill(turn2, &p).ok());
  EXPECT_EQ(p.cached_tokens(), 112u);
  EXPECT_EQ(p.computed_tokens(), 32u);  // blocks 7 and 8
  EXPECT_EQ(p.stored_blocks(), 2u);
  const std::vector<TokenId> ref2 = Reference(turn2, 20);
  Generation g2 = Generate(Request(turn2, 20));
  ASSERT_TRUE(g2.status.ok()) << g2.status.error_message();
  EXPECT_EQ(g2.cached_tokens, 144u);  // blocks 0..6 from its own cache, 7..8 from the store
  EXPECT_EQ(g2.tokens, ref2);

  // (5) use_cache=false: everything recomputed, same tokens.
  Generation g5 = Generate(Request(turn2, 20, /*use_cache=*/false));
  ASSERT_TRUE(g5.status.ok()) << g5.status.error_message();
  EXPECT_EQ(g5.cached_tokens, 0u);
  EXPECT_EQ(g5.tokens, ref2);

  // (3) A fresh decode worker (graceful SIGTERM, then restart) fetches from the store.
  auto st = decode_->process().Signal(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << decode_->log();
  ASSERT_NO_FATAL_FAILURE(StartDecode());
  Generation g3 = Generate(Request(turn2, 20));
  ASSERT_TRUE(g3.status.ok()) << g3.status.error_message();
  EXPECT_EQ(g3.cached_tokens, 144u);
  EXPECT_EQ(g3.tokens, ref2);

  // Graceful stop of the prefill worker too.
  st = prefill_->process().Signal(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << prefill_->log();
}

TEST_F(ServingIntegrationTest, DeadStoreDegradesToRecompute) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  const std::vector<TokenId> warm = Prompt(64, 3);
  v1::PrefillResponse p;
  ASSERT_TRUE(Prefill(warm, &p).ok());
  EXPECT_EQ(p.stored_blocks(), 4u);

  // (4) SIGKILL the store: both workers keep serving, by recompute.
  ASSERT_TRUE(store_->process().Signal(SIGKILL, absl::Seconds(5)).has_value());
  const std::vector<TokenId> prompt = Prompt(100, 4);
  ASSERT_TRUE(Prefill(prompt, &p).ok());
  EXPECT_EQ(p.cached_tokens(), 0u);
  EXPECT_EQ(p.computed_tokens(), 96u);
  EXPECT_EQ(p.stored_blocks(), 0u);
  Generation g = Generate(Request(prompt, 20));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.cached_tokens, 0u);
  EXPECT_EQ(g.tokens, Reference(prompt, 20));
  // The blocks the store had are gone with it: recompute, same tokens.
  Generation w = Generate(Request(warm, 10));
  ASSERT_TRUE(w.status.ok()) << w.status.error_message();
  EXPECT_EQ(w.cached_tokens, 0u);
  EXPECT_EQ(w.tokens, Reference(warm, 10));
  EXPECT_FALSE(PrefillInfo().store_connected());
  EXPECT_FALSE(DecodeInfo().store_connected());
  // (5) use_cache=false on top.
  Generation u = Generate(Request(prompt, 20, /*use_cache=*/false));
  ASSERT_TRUE(u.status.ok()) << u.status.error_message();
  EXPECT_EQ(u.cached_tokens, 0u);
  EXPECT_EQ(u.tokens, g.tokens);
}

TEST_F(ServingIntegrationTest, BadInputIsRejectedAndCancellationFreesMemory) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  // (6) Bad prompts: INVALID_ARGUMENT with a message, from both workers.
  const std::vector<std::pair<std::vector<TokenId>, std::string>> bad = {
      {{}, "empty"}, {{5, 4096, 7}, "vocabulary"}, {Prompt(4097, 5), "context"}};
  for (const auto& [tokens, needle] : bad) {
    v1::PrefillResponse p;
    grpc::Status s = Prefill(tokens, &p);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
    Generation g = Generate(Request(tokens, 4));
    EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(g.status.error_message().find(needle), std::string::npos) << g.status.error_message();
  }
  // Still serving.
  const std::vector<TokenId> ok = Prompt(40, 6);
  v1::PrefillResponse p;
  ASSERT_TRUE(Prefill(ok, &p).ok());
  EXPECT_EQ(p.computed_tokens(), 32u);
  Generation g = Generate(Request(ok, 8));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.tokens, Reference(ok, 8));

  // (7) Cancel a long generation mid-stream.
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    auto reader = decode_stub_->Generate(&ctx, Request(Prompt(50, 7), 3000));
    v1::GenerateResponse resp;
    size_t got = 0;
    while (got < 5 && reader->Read(&resp)) got += resp.tokens_size();
    ASSERT_GE(got, 5u);
    EXPECT_EQ(DecodeInfo().active_requests(), 1u);
    EXPECT_LT(DecodeInfo().free_pages(), DecodeInfo().total_pages());
    ctx.TryCancel();
    while (reader->Read(&resp)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ASSERT_TRUE(WaitFor([&] { return DecodeInfo().active_requests() == 0; }, absl::Seconds(10)));
  v1::WorkerInfo info = DecodeInfo();
  EXPECT_EQ(info.free_pages(), info.total_pages());  // cached blocks count as reclaimable
  // And the worker still serves.
  Generation again = Generate(Request(ok, 8));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.tokens, g.tokens);
  EXPECT_EQ(again.cached_tokens, 32u);
}

// A store that takes at most 4 keys per call and a 6-block prompt, sent twice: served from the
// store, whole, with the recompute's tokens (issue #1: a truncated lookup read as a hit crashed
// the decode worker).
TEST_F(ServingIntegrationTest, PromptsLongerThanTheStoresBatchLimitAreServedCorrectly) {
  StoreProcessOptions o;
  o.extra_args = {"--max-batch-keys=4"};
  ASSERT_NO_FATAL_FAILURE(StartStore(o));
  ASSERT_NO_FATAL_FAILURE(StartPrefill());
  ASSERT_NO_FATAL_FAILURE(StartDecode());
  const std::vector<TokenId> prompt = Prompt(100, 21);
  const std::vector<TokenId> ref = Reference(prompt, 12);
  v1::PrefillResponse p;
  ASSERT_TRUE(Prefill(prompt, &p).ok());
  EXPECT_EQ(p.stored_blocks(), 6u);
  ASSERT_TRUE(Prefill(prompt, &p).ok());
  EXPECT_EQ(p.cached_tokens(), 96u);
  for (int round = 0; round < 2; ++round) {
    Generation g = Generate(Request(prompt, 12));
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.cached_tokens, 96u);
    EXPECT_EQ(g.tokens, ref);
  }
  // A fresh decode worker has only the store to read from.
  ASSERT_TRUE(decode_->process().Signal(SIGTERM, absl::Seconds(10)).has_value());
  ASSERT_NO_FATAL_FAILURE(StartDecode());
  Generation g = Generate(Request(prompt, 12));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.cached_tokens, 96u);
  EXPECT_EQ(g.tokens, ref);
}

// kill -9 and restart of the store on the same port between two turns: the workers reconnect
// to the new incarnation, whose pool may be mapped at the old one's address (the decode worker
// unregisters the old pool before the unmapping and registers the new one, issue #2), and the
// next turn's text equals the recompute. The GPU form of the hazard is engine_cuda_test's
// RegisteredMemoryRemappedAtTheSameAddressIsReadAnew.
TEST_F(ServingIntegrationTest, StoreKilledAndRestartedBetweenTurnsOnTheSamePort) {
  StoreProcessOptions o;
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  o.grpc_port = *port;
  ASSERT_NO_FATAL_FAILURE(StartStore(o));
  ASSERT_NO_FATAL_FAILURE(StartPrefill());
  ASSERT_NO_FATAL_FAILURE(StartDecode());
  const std::vector<TokenId> prompt = Prompt(70, 22);
  v1::PrefillResponse p;
  ASSERT_TRUE(Prefill(prompt, &p).ok());
  Generation g1 = Generate(Request(prompt, 20));
  ASSERT_TRUE(g1.status.ok()) << g1.status.error_message();
  EXPECT_EQ(g1.cached_tokens, 64u);
  EXPECT_EQ(g1.tokens, Reference(prompt, 20));

  for (int restart = 0; restart < 2; ++restart) {
    ASSERT_TRUE(store_->process().Signal(SIGKILL, absl::Seconds(5)).has_value());
    store_.reset();
    ASSERT_NO_FATAL_FAILURE(StartStore(o));
    // The new store holds nothing; its blocks come from this turn's prefill.
    const std::vector<TokenId> turn =
        Concat(Concat(prompt, g1.tokens), Prompt(40 + 16 * restart, 23 + restart));
    const std::vector<TokenId> ref = Reference(turn, 20);
    ASSERT_TRUE(WaitFor(
        [&] { return Prefill(turn, &p).ok() && p.stored_blocks() + p.cached_tokens() / 16 > 0; },
        absl::Seconds(10)));
    // A decode worker that never saw the blocks reads them from the new store.
    ASSERT_TRUE(decode_->process().Signal(SIGTERM, absl::Seconds(10)).has_value());
    ASSERT_NO_FATAL_FAILURE(StartDecode());
    Generation g = Generate(Request(turn, 20));
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.tokens, ref);
    // The decode worker that did see the old store, after its restart: same text.
    Generation again = Generate(Request(turn, 20));
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_EQ(again.tokens, ref);
  }
}

// The store stops answering (SIGSTOP) while the decode worker fetches a prompt's blocks from it
// over UCX TCP: the request is served by recompute, with the recompute's tokens, within the
// transfer deadline (issue #5: the fetch waited until the store came back, stalling the decode
// loop and SIGTERM); and with the store still stopped the worker stops on SIGTERM in bounded
// time. A watchdog resumes the store after 15 s so that the unfixed worker ends too.
TEST_F(ServingIntegrationTest, AStoreStoppedMidFetchCostsOnlyRecomputeWithinTheDeadline) {
  if (testing::kSanitized) {
    // Its 2000-token prefill alone takes over 30 s under ASan on two cores.
    GTEST_SKIP() << "a timing test against compute; the plain tree runs it";
  }
  env_ = {{"UCX_TLS", "tcp,self"}};
  extra_worker_args_ = {"--store-transfer-timeout-ms=1000", "--store-rpc-timeout-ms=1000"};
  ASSERT_NO_FATAL_FAILURE(StartAll());
  auto store_stub = v1::CacheStore::NewStub(
      grpc::CreateChannel(store_->address(), grpc::InsecureChannelCredentials()));
  auto leased = [&] {
    grpc::ClientContext ctx;
    Deadline(&ctx, 1);
    v1::StatsResponse r;
    return store_stub->Stats(&ctx, v1::StatsRequest(), &r).ok() && r.active_leases() > 0;
  };
  const pid_t pid = store_->process().pid();
  bool stopped_mid_fetch = false;
  for (int attempt = 0; attempt < 5 && !stopped_mid_fetch; ++attempt) {
    // A prompt of 125 blocks (8 MiB) in the store that this decode worker has never seen.
    const std::vector<TokenId> prompt = Prompt(2000, 60 + attempt);
    v1::PrefillResponse p;
    ASSERT_TRUE(WaitFor(  // after a stop, the workers skip the store for a moment
        [&] {
          return Prefill(prompt, &p).ok() && p.stored_blocks() + p.cached_tokens() / 16 == 125;
        },
        absl::Seconds(10)));
    const absl::Time t0 = absl::Now();
    Generation baseline = Generate(Request(prompt, 4, /*use_cache=*/false));
    const absl::Duration compute = absl::Now() - t0;
    ASSERT_TRUE(baseline.status.ok()) << baseline.status.error_message();

    absl::Notification done;
    std::thread watchdog([&] {
      if (!done.WaitForNotificationWithTimeout(absl::Seconds(15))) kill(pid, SIGCONT);
    });
    Generation g;
    absl::Duration took;
    std::thread request([&] {
      const absl::Time start = absl::Now();
      g = Generate(Request(prompt, 4));
      took = absl::Now() - start;
    });
    // Stop it as soon as the fetch holds a lease (polling as fast as the store answers).
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (!leased() && absl::Now() < give_up) {
    }
    kill(pid, SIGSTOP);
    const size_t log_before = decode_->log().size();
    // Meanwhile the worker's status answers at once: it does not use the store client that the
    // stalled engine thread holds (issue #9, FillWorkerInfo).
    absl::SleepFor(absl::Milliseconds(100));
    const absl::Time asked = absl::Now();
    DecodeInfo();
    const absl::Duration info_took = absl::Now() - asked;
    request.join();
    done.Notify();  // the store stays stopped until the end of the attempt
    watchdog.join();
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.tokens, baseline.tokens);
    // Whether a transfer hit the stop (else it hit a control call, bounded by gRPC): the node
    // was marked down by a timed-out UCX batch.
    stopped_mid_fetch = decode_->log().find(": timed out", log_before) != std::string::npos;
    std::cerr << "attempt " << attempt << ": " << g.cached_tokens << " tokens fetched, request "
              << took << ", compute " << compute << "\n";
    if (stopped_mid_fetch) {
      // (Unfixed, it waited for the store: 1.9 s. The bound leaves room for a loaded CI host.)
      EXPECT_LT(info_took, absl::Seconds(1)) << "GetWorkerInfo waited for the store";
      // One transfer deadline (or one control deadline), then the node is skipped. (Unfixed,
      // it waited for the watchdog's SIGCONT, 15 s.) A fifth more than compute: on a loaded
      // host two recomputes of the same prompt differ by seconds.
      EXPECT_LT(took, compute * 1.2 + absl::Seconds(1) + absl::Seconds(3)) << "compute " << compute;
      // Stopped store: SIGTERM ends the worker in bounded time, a request in flight included.
      std::thread late([&] { Generate(Request(Prompt(500, 70), 200)); });
      absl::SleepFor(absl::Milliseconds(300));
      const absl::Time stop = absl::Now();
      auto st = decode_->process().Signal(SIGTERM, absl::Seconds(20));
      late.join();
      ASSERT_TRUE(st.has_value());
      EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << decode_->log();
      EXPECT_LT(absl::Now() - stop, absl::Seconds(6));
    }
    kill(pid, SIGCONT);
  }
  // Where the stop never lands inside a transfer (timing on a loaded host), the deterministic
  // deadline tests (UcxTimeoutTest, StoreIntegrationTest.AGetFromAStoppedStore...) still cover
  // the transport; this end-to-end check says it did not run rather than pass.
  if (!stopped_mid_fetch) GTEST_SKIP() << "the store was never stopped during a fetch";
}

// SIGTERM while requests queue behind the one prefill that computes: the worker exits once
// that one is done; the queued ones get UNAVAILABLE instead of being computed first (issue #9).
TEST_F(ServingIntegrationTest, PrefillStopsWithoutComputingItsQueuedRequests) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  // Long enough that requests queue behind it (shorter under a sanitizer, 5-10 x slower).
  const int len = testing::kSanitized ? 300 : 1000;
  const std::vector<TokenId> warm = Prompt(len, 30);
  v1::PrefillResponse p;
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(Prefill(warm, &p).ok());
  const absl::Duration one = absl::Now() - t0;  // one long prefill
  constexpr int kQueued = 8;
  std::vector<grpc::Status> status(kQueued + 1);
  std::vector<std::thread> clients;
  for (int i = 0; i <= kQueued; ++i) {
    clients.emplace_back([&, i] {
      v1::PrefillResponse r;
      status[i] = Prefill(Prompt(len, 40 + i), &r);
    });
  }
  ASSERT_TRUE(
      WaitFor([&] { return PrefillInfo().active_requests() == kQueued + 1; }, absl::Seconds(10)));
  const absl::Time stop = absl::Now();
  auto st = prefill_->process().Signal(SIGTERM, one * (kQueued + 1) + absl::Seconds(30));
  const absl::Duration took = absl::Now() - stop;
  std::cerr << "one prefill " << one << ", stopped in " << took << "\n";
  for (auto& c : clients) c.join();
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << prefill_->log();
  // At most the one computing (and the grace period), not all of them one after another.
  EXPECT_LT(took, one * 3 / 2 + absl::Milliseconds(1500)) << "one prefill takes " << one;
  int unavailable = 0;
  for (const grpc::Status& s : status)
    unavailable += s.error_code() == grpc::StatusCode::UNAVAILABLE;
  EXPECT_GE(unavailable, kQueued - 1);
}

}  // namespace
}  // namespace kvtier
