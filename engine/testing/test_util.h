// Test-only helpers shared by the engine's tests and the tests of the layers above it that need
// a model on disk: temporary directories that are always removed, random models written once
// per test program, random token ids and whole-file reads and writes.
//
// The kvtier_engine_test_util library (gtest); the writers of model_writer.h and
// tokenizer_writer.h are apart so that kvtier-model can use them without gtest.
// Thread-compatible: call from the test's thread.
#ifndef KVTIER_ENGINE_TESTING_TEST_UTIL_H_
#define KVTIER_ENGINE_TESTING_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"

namespace kvtier::testing {

// Whether this program is built with a sanitizer (the ASan+UBSan or TSan tree of
// docs/testing.md). The CPU engine runs 5-10 x slower there, so a test whose point is a timing
// bound relative to compute skips itself or widens the bound (the plain tree checks the tight one).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

// A fresh empty directory under the test temp dir (::testing::TempDir()) named after `name`,
// removed with everything in it on destruction. Move-only.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& name);
  ~ScopedTempDir();
  ScopedTempDir(ScopedTempDir&& other) noexcept;
  ScopedTempDir& operator=(ScopedTempDir&& other) noexcept;
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  void Remove();
  std::string path_;
};

// A fixture whose every test gets an empty directory of its own (dir_, named after the suite
// and the test), removed after the test. Subclasses that override SetUp/TearDown call these.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // dir_/`name`.
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;

 private:
  std::optional<ScopedTempDir> temp_;
};

// The directory of WriteRandomModel(config, seed, dtype) (model_writer.h), written on the first
// call with `name` and returned again by later calls; all of them are removed when the test program
// ends (a global test environment). A failed write is a test failure.
const std::string& RandomModelDir(const std::string& name, const engine::ModelConfig& config,
                                  uint64_t seed, engine::DType dtype);

// `n` token ids in [0, vocab), the same for the same seed.
std::vector<int32_t> RandomTokens(size_t n, uint64_t seed, int vocab);

// The whole file at `path` ("" if unreadable), and the whole file written (truncated).
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& bytes);

}  // namespace kvtier::testing

#endif  // KVTIER_ENGINE_TESTING_TEST_UTIL_H_
