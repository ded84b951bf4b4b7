#include "transport/ucx.h"

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "transport/progress_thread.h"

namespace kvtier::transport {
namespace {

// The UCX transport set each case runs over (read by ucp_config_read at context creation).
class UcxTransportTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { setenv("UCX_TLS", GetParam(), 1); }
  void TearDown() override { unsetenv("UCX_TLS"); }
};

TEST_P(UcxTransportTest, BatchedPutAndGetOneSided) {
  auto server_ctx = UcxContext::Create();
  ASSERT_TRUE(server_ctx.ok()) << server_ctx.status();
  EXPECT_FALSE((*server_ctx)->memory_types().empty());
  auto server_worker = UcxWorker::Create(server_ctx->get());
  ASSERT_TRUE(server_worker.ok()) << server_worker.status();
  constexpr size_t kBlock = 256 * 1024, kBlocks = 8;
  auto pool = MemoryRegion::Allocate(server_ctx->get(), kBlock * kBlocks);
  ASSERT_TRUE(pool.ok()) << pool.status();
  std::memset((*pool)->data(), 0, kBlock * kBlocks);
  auto rkey_bytes = (*pool)->PackRkey();
  ASSERT_TRUE(rkey_bytes.ok());
  auto progress = ProgressThread::Start(server_worker->get());
  ASSERT_TRUE(progress.ok()) << progress.status();

  auto client_ctx = UcxContext::Create();
  ASSERT_TRUE(client_ctx.ok());
  auto client_worker = UcxWorker::Create(client_ctx->get());
  ASSERT_TRUE(client_worker.ok());
  {
    auto ep = Endpoint::Connect(client_worker->get(), (*server_worker)->address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    auto rkey = (*ep)->UnpackRkey(*rkey_bytes);
    ASSERT_TRUE(rkey.ok()) << rkey.status();

    std::vector<uint8_t> src(kBlock * kBlocks);
    std::iota(src.begin(), src.end(), 7);
    const uint64_t base = reinterpret_cast<uint64_t>((*pool)->data());
    std::vector<RmaOp> puts;
    for (size_t i = 0; i < kBlocks; ++i) {
      // Reverse order so that a wrong offset shows.
      puts.push_back({src.data() + i * kBlock, base + (kBlocks - 1 - i) * kBlock, kBlock});
    }
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    ASSERT_TRUE((*ep)->PutBatch(**rkey, puts, deadline).ok());
    for (size_t i = 0; i < kBlocks; ++i) {
      ASSERT_EQ(0, std::memcmp((*pool)->data() + (kBlocks - 1 - i) * kBlock,
                               src.data() + i * kBlock, kBlock))
          << "block " << i;
    }
    std::string lanes = (*ep)->Describe();
    if (std::string(GetParam()) == "tcp") {
      EXPECT_NE(lanes.find("tcp"), std::string::npos) << lanes;
    } else {
      EXPECT_EQ(lanes.find("tcp"), std::string::npos) << lanes;
    }

    std::vector<uint8_t> dst(kBlock * kBlocks, 0);
    std::vector<RmaOp> gets;
    for (size_t i = 0; i < kBlocks; ++i) {
      gets.push_back({dst.data() + i * kBlock, base + i * kBlock, kBlock});
    }
    ASSERT_TRUE((*ep)->GetBatch(**rkey, gets, deadline).ok());
    for (size_t i = 0; i < kBlocks; ++i) {
      ASSERT_EQ(
          0, std::memcmp(dst.data() + i * kBlock, src.data() + (kBlocks - 1 - i) * kBlock, kBlock));
    }
    EXPECT_FALSE((*ep)->failed());
  }
  (*progress)->Stop();
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxTransportTest, ::testing::Values("sm", "tcp"));

// A peer that stops answering mid-conversation (its progress thread stops, as under SIGSTOP):
// over TCP, RMA needs the target's progress, so the batch cannot complete. It must fail at its
// deadline (ucp_request_cancel does nothing for RMA and flush requests: the endpoint is
// force-closed), not when the peer comes back. A watchdog resumes the peer after 8 s so that
// the unfixed code ends too.
TEST(UcxTimeoutTest, ABatchToAPeerThatStoppedAnsweringEndsAtItsDeadline) {
  setenv("UCX_TLS", "tcp", 1);
  auto server_ctx = UcxContext::Create();
  ASSERT_TRUE(server_ctx.ok()) << server_ctx.status();
  auto server_worker = UcxWorker::Create(server_ctx->get());
  ASSERT_TRUE(server_worker.ok()) << server_worker.status();
  constexpr size_t kBlock = 256 * 1024, kBlocks = 16;
  auto pool = MemoryRegion::Allocate(server_ctx->get(), kBlock * kBlocks);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto rkey_bytes = (*pool)->PackRkey();
  ASSERT_TRUE(rkey_bytes.ok());
  auto progress = ProgressThread::Start(server_worker->get());
  ASSERT_TRUE(progress.ok()) << progress.status();

  auto client_ctx = UcxContext::Create();
  ASSERT_TRUE(client_ctx.ok());
  auto client_worker = UcxWorker::Create(client_ctx->get());
  ASSERT_TRUE(client_worker.ok());
  std::unique_ptr<ProgressThread> resumed;
  {
    auto ep = Endpoint::Connect(client_worker->get(), (*server_worker)->address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    auto rkey = (*ep)->UnpackRkey(*rkey_bytes);
    ASSERT_TRUE(rkey.ok()) << rkey.status();
    std::vector<uint8_t> buf(kBlock * kBlocks, 1);
    const uint64_t base = reinterpret_cast<uint64_t>((*pool)->data());
    std::vector<RmaOp> ops;
    for (size_t i = 0; i < kBlocks; ++i) {
      ops.push_back({buf.data() + i * kBlock, base + i * kBlock, kBlock});
    }
    // Connected and working first.
    ASSERT_TRUE((*ep)->PutBatch(**rkey, ops, absl::Now() + absl::Seconds(20)).ok());

    (*progress)->Stop();  // the peer stops answering
    absl::Notification done;
    std::thread watchdog([&] {
      if (!done.WaitForNotificationWithTimeout(absl::Seconds(8))) {
        auto p = ProgressThread::Start(server_worker->get());
        if (p.ok()) resumed = std::move(*p);
      }
    });
    const absl::Time start = absl::Now();
    absl::Status st = (*ep)->GetBatch(**rkey, ops, start + absl::Milliseconds(500));
    const absl::Duration took = absl::Now() - start;
    done.Notify();
    watchdog.join();
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    EXPECT_LT(took, absl::Milliseconds(500 + 1500)) << "waited past the deadline";
    EXPECT_TRUE((*ep)->failed());
    // The endpoint is closed for good: later batches fail at once.
    EXPECT_FALSE((*ep)->PutBatch(**rkey, ops, absl::Now() + absl::Seconds(1)).ok());
  }
  if (resumed != nullptr) resumed->Stop();
  unsetenv("UCX_TLS");
}

TEST(UcxTest, BadInputIsAnError) {
  auto ctx = UcxContext::Create();
  ASSERT_TRUE(ctx.ok());
  auto worker = UcxWorker::Create(ctx->get());
  ASSERT_TRUE(worker.ok());
  EXPECT_FALSE(Endpoint::Connect(worker->get(), "").ok());
  EXPECT_FALSE(UcsToStatus(UCS_ERR_NO_MEMORY, "x").ok());
  EXPECT_TRUE(UcsToStatus(UCS_OK, "x").ok());
}

}  // namespace
}  // namespace kvtier::transport
