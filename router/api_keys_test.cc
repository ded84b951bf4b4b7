#include "router/api_keys.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace kvtier::router {
namespace {

TEST(ApiKeysTest, ParsesKeysAndTenants) {
  auto keys = ApiKeys::Parse(
      "# comment\n\nsk-aaaaaaaaaaaaaaaa  tenant-a\n\tsk-bbbbbbbbbbbbbbbb\tb.2 \n"
      "sk-cccccccccccccccc tenant-a\n",
      "keys");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 3u);
  EXPECT_EQ(keys->Tenant("Bearer sk-aaaaaaaaaaaaaaaa"), "tenant-a");
  EXPECT_EQ(keys->Tenant("Bearer sk-cccccccccccccccc"), "tenant-a");  // two keys, one tenant
  EXPECT_EQ(keys->Tenant("Bearer sk-bbbbbbbbbbbbbbbb"), "b.2");
  EXPECT_EQ(keys->Tenant("Bearer sk-aaaaaaaaaaaaaaab"), std::nullopt);
  EXPECT_EQ(keys->Tenant("sk-aaaaaaaaaaaaaaaa"), std::nullopt);  // no scheme
  EXPECT_EQ(keys->Tenant("Basic sk-aaaaaaaaaaaaaaaa"), std::nullopt);
  EXPECT_EQ(keys->Tenant(""), std::nullopt);
}

TEST(ApiKeysTest, BadFilesAreClearErrors) {
  auto error = [](absl::string_view text) {
    auto keys = ApiKeys::Parse(text, "api_keys_file f");
    EXPECT_FALSE(keys.ok()) << text;
    return keys.ok() ? std::string() : std::string(keys.status().message());
  };
  EXPECT_EQ(error("sk-aaaaaaaaaaaaaaaa\n"), "api_keys_file f line 1: expected 'KEY TENANT'");
  EXPECT_EQ(error("# x\nsk-aaaaaaaaaaaaaaaa a b\n"),
            "api_keys_file f line 2: expected 'KEY TENANT'");
  EXPECT_EQ(error("short a\n"), "api_keys_file f line 1: the key is shorter than 16 characters");
  EXPECT_EQ(error("sk-aaaaaaaaaaaaaaaa a/b\n"),
            "api_keys_file f line 1: a tenant is made of letters, digits, '_', '.' and '-'");
  EXPECT_EQ(error("sk-aaaaaaaaaaaaaaaa a\nsk-aaaaaaaaaaaaaaaa b\n"),
            "api_keys_file f line 2: the key is listed twice");
  EXPECT_EQ(error("# nothing\n"), "api_keys_file f: no key");

  auto missing = ApiKeys::Load("/nonexistent/api_keys");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  const std::string path = ::testing::TempDir() + "/api_keys_" + std::to_string(getpid());
  std::ofstream(path) << "sk-dddddddddddddddd d\n";
  auto loaded = ApiKeys::Load(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->Tenant("Bearer sk-dddddddddddddddd"), "d");
}

}  // namespace
}  // namespace kvtier::router
