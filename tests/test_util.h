// Test-only helpers of the multi-process integration tests.
//
// Plain functions; thread-safe.
#ifndef KVTIER_TESTS_TEST_UTIL_H_
#define KVTIER_TESTS_TEST_UTIL_H_

#include <string>

namespace kvtier::testing {

// A fresh empty directory "kvtier_`name`_<pid>" under $TEST_TMPDIR (or /tmp), as gtest's
// TempDir(). The caller removes it (tests keep it, with the logs, when they fail).
std::string MakeTempDir(const std::string& name);

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TEST_UTIL_H_
