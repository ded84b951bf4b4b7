// Test-only helpers of the multi-process integration tests.
//
// Plain functions; thread-safe (ConnectStoreClient reports failures to the calling test).
#ifndef KVTIER_TESTS_TEST_UTIL_H_
#define KVTIER_TESTS_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "kvtier/store_client.h"

namespace kvtier::testing {

// A fresh empty directory "kvtier_`name`_<pid>" under $TEST_TMPDIR (or /tmp), as gtest's
// TempDir(). The caller removes it (tests keep it, with the logs, when they fail).
std::string MakeTempDir(const std::string& name);

// At the end of a test: removes `dir` when it passed, else prints the logs `dir`/`logs[i]` that
// exist (and keeps the directory).
void RemoveDirOrPrintLogs(const std::string& dir, bool failed,
                          const std::vector<std::string>& logs);

// Synthetic payloads of `keys` (FillSyntheticBlock: each block is its key's own), with the
// pointer lists StoreClient::Put and Get take (src and dst point at data).
struct SyntheticBlocks {
  SyntheticBlocks(const std::vector<BlockKey>& keys, size_t bytes);
  void Clear();  // zeroes every payload
  std::vector<std::vector<uint8_t>> data;
  std::vector<const void*> src;
  std::vector<void*> dst;
};

// A store client of the one store at `address`, retrying a failed node after 50 ms (tests
// restart and stop stores). A failure to create it fails the test (EXPECT) and returns null.
std::unique_ptr<StoreClient> ConnectStoreClient(const std::string& address);

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TEST_UTIL_H_
