#include "common/service.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kvtier/v1/cachestore.grpc.pb.h"

namespace kvtier {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ServiceTest, ReadyFileHoldsThePortsAndPid) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/kvtier_service_test_", getpid(), ".ready.json");
  ASSERT_TRUE(WriteReadyFile(path, {{"http_port", 8000}, {"grpc_port", 8000}}).ok());
  EXPECT_EQ(ReadAll(path),
            absl::StrCat("{\"http_port\":8000,\"grpc_port\":8000,\"pid\":", getpid(), "}\n"));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  std::filesystem::remove(path);
  EXPECT_TRUE(WriteReadyFile("", {{"grpc_port", 1}}).ok());  // no path: nothing to write
  EXPECT_FALSE(WriteReadyFile("/nonexistent-dir/x.json", {{"grpc_port", 1}}).ok());
}

TEST(ServiceTest, GrpcServerReportsItsPortOrFails) {
  v1::CacheStore::Service unimplemented;  // any service: gRPC refuses to serve none
  TlsOptions plain;
  plain.plaintext = true;
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server =
      StartGrpcServer("test", "127.0.0.1:0", plain, {&unimplemented}, &port);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT(port, 0);
  (*server)->Shutdown();
  int bad = 0;  // not an address of this host (TEST-NET-1)
  absl::StatusOr<std::unique_ptr<grpc::Server>> none =
      StartGrpcServer("test", "192.0.2.1:1", plain, {&unimplemented}, &bad);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("192.0.2.1:1"), std::string::npos);
}

}  // namespace
}  // namespace kvtier
