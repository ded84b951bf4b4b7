#include "cachestore/spill_store.h"

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/checksum.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/block_key.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace kvtier::cachestore {
namespace {

using ::testing::HasSubstr;

constexpr size_t kPayloadBytes = 2 << 20;
constexpr uint64_t kCapacity = 256ull << 20;

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = rng();
    for (int b = 0; b < 8; ++b) out[i + b] = static_cast<uint8_t>(v >> (8 * b));
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(rng());
  return out;
}

BlockKey MakeKey(uint8_t tag) {
  BlockKey k{};
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(tag * 31 + i);
  return k;
}

SpillMeta MakeMeta(uint8_t tag, const std::vector<uint8_t>& payload, bool has_parent) {
  SpillMeta m;
  m.ns = MakeKey(static_cast<uint8_t>(tag + 100));
  m.has_parent = has_parent;
  if (has_parent) m.parent = MakeKey(static_cast<uint8_t>(tag + 200));
  m.size = payload.size();
  m.checksum = BlockChecksum(payload.data(), payload.size());
  return m;
}

void ExpectMetaEq(const SpillMeta& a, const SpillMeta& b) {
  EXPECT_EQ(a.ns, b.ns);
  EXPECT_EQ(a.has_parent, b.has_parent);
  EXPECT_EQ(a.parent, b.parent);
  EXPECT_EQ(a.size, b.size);
  EXPECT_EQ(a.checksum, b.checksum);
}

class SpillStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "spill_store_XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    dir_ = (std::filesystem::path(root_) / "db").string();
  }

  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }

  std::unique_ptr<SpillStore> OpenOrDie() {
    auto store = SpillStore::Open(dir_, kCapacity);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  std::map<BlockKey, SpillMeta> AllMetas(SpillStore& store) {
    std::map<BlockKey, SpillMeta> out;
    absl::Status s = store.ForEachMeta([&](const BlockKey& k, const SpillMeta& m) {
      EXPECT_TRUE(out.emplace(k, m).second) << "key visited twice";
    });
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  std::string root_;
  std::string dir_;
};

TEST_F(SpillStoreTest, PutReadRoundTrip) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> payload = RandomBytes(kPayloadBytes, 1);
  const BlockKey key = MakeKey(1);
  const SpillMeta meta = MakeMeta(1, payload, /*has_parent=*/true);
  ASSERT_TRUE(store->Put(key, meta, payload.data(), payload.size()).ok());

  std::vector<uint8_t> out(kPayloadBytes);
  absl::Status s = store->Read(key, out.data(), out.size(), meta.checksum);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, payload);

  // Overwrite with another payload.
  const std::vector<uint8_t> payload2 = RandomBytes(kPayloadBytes, 2);
  const SpillMeta meta2 = MakeMeta(1, payload2, /*has_parent=*/false);
  ASSERT_TRUE(store->Put(key, meta2, payload2.data(), payload2.size()).ok());
  s = store->Read(key, out.data(), out.size(), meta2.checksum);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, payload2);
  auto metas = AllMetas(*store);
  ASSERT_EQ(metas.size(), 1u);
  ExpectMetaEq(metas.at(key), meta2);
}

TEST_F(SpillStoreTest, ReadAbsentIsNotFound) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  std::vector<uint8_t> out(16);
  EXPECT_TRUE(absl::IsNotFound(store->Read(MakeKey(9), out.data(), out.size(), 0)));
}

TEST_F(SpillStoreTest, WrongChecksumIsDataLoss) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> payload = RandomBytes(8192, 3);
  const SpillMeta meta = MakeMeta(2, payload, false);
  ASSERT_TRUE(store->Put(MakeKey(2), meta, payload.data(), payload.size()).ok());
  std::vector<uint8_t> out(payload.size());
  absl::Status s = store->Read(MakeKey(2), out.data(), out.size(), meta.checksum ^ 1);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("checksum"));
}

TEST_F(SpillStoreTest, WrongSizeIsDataLoss) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> payload = RandomBytes(8192, 4);
  const SpillMeta meta = MakeMeta(3, payload, false);
  ASSERT_TRUE(store->Put(MakeKey(3), meta, payload.data(), payload.size()).ok());
  std::vector<uint8_t> out(payload.size() + 1);
  absl::Status s = store->Read(MakeKey(3), out.data(), out.size(), meta.checksum);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("8192"));
  EXPECT_THAT(s.message(), HasSubstr("8193"));
  s = store->Read(MakeKey(3), out.data(), payload.size() - 1, meta.checksum);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
}

TEST_F(SpillStoreTest, DeleteThenNotFound) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> payload = RandomBytes(8192, 5);
  const SpillMeta meta = MakeMeta(4, payload, false);
  ASSERT_TRUE(store->Put(MakeKey(4), meta, payload.data(), payload.size()).ok());
  ASSERT_TRUE(store->Delete(MakeKey(4)).ok());
  std::vector<uint8_t> out(payload.size());
  EXPECT_TRUE(absl::IsNotFound(store->Read(MakeKey(4), out.data(), out.size(), meta.checksum)));
  EXPECT_TRUE(AllMetas(*store).empty());
  // Deleting an absent key is not an error.
  EXPECT_TRUE(store->Delete(MakeKey(4)).ok());
  EXPECT_TRUE(store->Delete(MakeKey(77)).ok());
}

TEST_F(SpillStoreTest, PersistsAcrossReopen) {
  std::map<BlockKey, SpillMeta> want;
  std::map<BlockKey, std::vector<uint8_t>> payloads;
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    for (uint8_t i = 0; i < 4; ++i) {
      // Mix of blob-sized and inline-sized payloads.
      std::vector<uint8_t> payload = RandomBytes(i % 2 ? kPayloadBytes : 100, 10 + i);
      const SpillMeta meta = MakeMeta(i, payload, /*has_parent=*/i != 0);
      ASSERT_TRUE(store->Put(MakeKey(i), meta, payload.data(), payload.size()).ok());
      want[MakeKey(i)] = meta;
      payloads[MakeKey(i)] = std::move(payload);
    }
  }  // Closes the database.

  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto got = AllMetas(*store);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [key, meta] : want) {
    ASSERT_TRUE(got.contains(key));
    ExpectMetaEq(got.at(key), meta);
    std::vector<uint8_t> out(meta.size);
    absl::Status s = store->Read(key, out.data(), out.size(), meta.checksum);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(out, payloads.at(key));
  }
}

TEST_F(SpillStoreTest, MalformedMetaIsDroppedOnScan) {
  const std::vector<uint8_t> payload = RandomBytes(8192, 20);
  const SpillMeta good = MakeMeta(1, payload, true);
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    for (uint8_t i = 1; i <= 3; ++i) {
      ASSERT_TRUE(store->Put(MakeKey(i), good, payload.data(), payload.size()).ok());
    }
  }

  // Corrupt entries behind SpillStore's back with a raw RocksDB handle.
  {
    rocksdb::DBOptions options;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {"meta", rocksdb::ColumnFamilyOptions()},
        {"data", rocksdb::ColumnFamilyOptions()},
    };
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(options, dir_ + "/db", cfs, &handles, &raw);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::unique_ptr<rocksdb::DB> db(raw);
    auto key_slice = [](const BlockKey& k) {
      return rocksdb::Slice(reinterpret_cast<const char*>(k.data()), k.size());
    };
    // Garbage bytes for key 2.
    EXPECT_TRUE(db->Put({}, handles[1], key_slice(MakeKey(2)), "garbage!").ok());
    // Right length but an unknown version for key 3.
    std::string bad_version(82, '\0');
    bad_version[0] = 2;
    EXPECT_TRUE(db->Put({}, handles[1], key_slice(MakeKey(3)), bad_version).ok());
    // A key of the wrong length.
    EXPECT_TRUE(db->Put({}, handles[1], "short", std::string(82, '\0')).ok());
    for (auto* h : handles) EXPECT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    EXPECT_TRUE(db->Close().ok());
  }

  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto metas = AllMetas(*store);
  ASSERT_EQ(metas.size(), 1u);
  ASSERT_TRUE(metas.contains(MakeKey(1)));
  ExpectMetaEq(metas.at(MakeKey(1)), good);

  // The malformed entries' payloads went with them; the good one is intact.
  std::vector<uint8_t> out(payload.size());
  EXPECT_TRUE(absl::IsNotFound(store->Read(MakeKey(2), out.data(), out.size(), good.checksum)));
  EXPECT_TRUE(absl::IsNotFound(store->Read(MakeKey(3), out.data(), out.size(), good.checksum)));
  EXPECT_TRUE(store->Read(MakeKey(1), out.data(), out.size(), good.checksum).ok());

  // Gone for good, also after a reopen.
  EXPECT_EQ(AllMetas(*store).size(), 1u);
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(AllMetas(*store).size(), 1u);
}

TEST_F(SpillStoreTest, OpenOnRegularFileFails) {
  const std::string file = (std::filesystem::path(root_) / "not_a_dir").string();
  { std::ofstream(file) << "x"; }
  auto store = SpillStore::Open(file, kCapacity);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(file));
}

}  // namespace
}  // namespace kvtier::cachestore
