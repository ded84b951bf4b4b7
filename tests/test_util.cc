#include "tests/test_util.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/synthetic_block.h"
#include "gtest/gtest.h"

namespace kvtier::testing {

std::string MakeTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path p = std::filesystem::path(base != nullptr && *base ? base : "/tmp") /
                            absl::StrCat("kvtier_", name, "_", getpid());
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

void RemoveDirOrPrintLogs(const std::string& dir, bool failed,
                          const std::vector<std::string>& logs) {
  if (!failed) {
    std::filesystem::remove_all(dir);
    return;
  }
  for (const std::string& log : logs) {
    std::ifstream f(dir + "/" + log);
    if (f) std::cerr << "---- " << log << "\n" << f.rdbuf() << "\n";
  }
}

std::unique_ptr<StoreClient> ConnectStoreClient(const std::string& address) {
  StoreClientOptions o;
  o.stores = {address};
  o.tls.plaintext = true;  // the test stores serve plain text
  o.retry_after = absl::Milliseconds(50);
  auto c = StoreClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

SyntheticBlocks::SyntheticBlocks(const std::vector<BlockKey>& keys, size_t bytes)
    : data(keys.size()) {
  for (size_t i = 0; i < keys.size(); ++i) {
    data[i].resize(bytes);
    FillSyntheticBlock(keys[i], data[i].data(), bytes);
    src.push_back(data[i].data());
    dst.push_back(data[i].data());
  }
}

void SyntheticBlocks::Clear() {
  for (auto& d : data) std::fill(d.begin(), d.end(), 0);
}

}  // namespace kvtier::testing
