#include "engine/testing/test_util.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/testing/model_writer.h"

namespace kvtier::testing {
namespace {

std::map<std::string, std::string>& ModelDirs() {
  static auto* dirs = new std::map<std::string, std::string>();
  return *dirs;
}

// Removes the models of RandomModelDir when the test program ends.
class ModelDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [name, dir] : ModelDirs()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
    ModelDirs().clear();
  }
};
::testing::Environment* const kCleanup = ::testing::AddGlobalTestEnvironment(new ModelDirCleanup);

// A new directory "kvtier_`name`_XXXXXX" under the test temp dir; "" (and a test failure) if
// it cannot be made.
std::string CreateUniqueDir(const std::string& name) {
  std::string tmpl =
      (std::filesystem::path(::testing::TempDir()) / absl::StrCat("kvtier_", name, "_XXXXXX"))
          .string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << tmpl << ": " << std::strerror(errno);
    return "";
  }
  return tmpl;
}

}  // namespace

ScopedTempDir::ScopedTempDir(const std::string& name) : path_(CreateUniqueDir(name)) {}

ScopedTempDir::~ScopedTempDir() { Remove(); }

ScopedTempDir::ScopedTempDir(ScopedTempDir&& other) noexcept : path_(std::move(other.path_)) {
  other.path_.clear();
}

ScopedTempDir& ScopedTempDir::operator=(ScopedTempDir&& other) noexcept {
  if (this != &other) {
    Remove();
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

void ScopedTempDir::Remove() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  path_.clear();
}

void TempDirTest::SetUp() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  temp_.emplace(absl::StrCat(info->test_suite_name(), "_", info->name()));
  dir_ = temp_->path();
}

void TempDirTest::TearDown() { temp_.reset(); }

const std::string& RandomModelDir(const std::string& name, const engine::ModelConfig& config,
                                  uint64_t seed, engine::DType dtype) {
  std::map<std::string, std::string>& dirs = ModelDirs();
  auto it = dirs.find(name);
  if (it != dirs.end()) return it->second;
  // Kept until the test program ends (ModelDirCleanup).
  std::string dir = CreateUniqueDir("model_" + name);
  if (!dir.empty()) {
    const absl::Status st = WriteRandomModel(config, seed, dtype, dir);
    EXPECT_TRUE(st.ok()) << st;
  }
  return dirs.emplace(name, std::move(dir)).first->second;
}

std::vector<int32_t> RandomTokens(size_t n, uint64_t seed, int vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace kvtier::testing
