// The spill tier under disk faults (docs/store-protocol.md, "Spill tier"): real kvtier-store
// processes over real file systems that fill up (a tmpfs of a fixed size), become unwritable
// (chattr +i, a read-only remount) or have their files damaged between runs. Each case checks
// that the store stays up, serves from memory, never returns wrong bytes, and reports the fault
// in its log and metrics. Mounting needs root: without it the cases that mount are skipped,
// saying why.
#include <httplib.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "common/synthetic_block.h"
#include "gtest/gtest.h"
#include "kvtier/store_client.h"
#include "tests/test_keys.h"
#include "tests/test_util.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;
using testing::TestKeys;
using testing::TestNamespace;

constexpr size_t kBlock = 256 * 1024;
constexpr uint32_t kChain = 8;  // blocks per Put
constexpr char kSmallCapacity[] = "64MiB";

class SpillFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("UCX_TLS", "sm,self", 1);
    dir_ = testing::MakeTempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override {
    // Whatever happened: processes die (their destructors), attributes and mounts go.
    if (!immutable_.empty()) Run("chattr -R -i " + immutable_);
    for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) umount2(it->c_str(), MNT_DETACH);
    if (!HasFailure()) fs::remove_all(dir_);
    unsetenv("UCX_TLS");
  }

  static int Run(const std::string& cmd) { return std::system((cmd + " 2>/dev/null").c_str()); }

  // A tmpfs of `size` at dir_/`name`; false (and the reason in *why) if it cannot be mounted.
  bool MountTmpfs(const std::string& name, const std::string& size, std::string* why) {
    const std::string path = dir_ + "/" + name;
    fs::create_directories(path);
    if (mount("tmpfs", path.c_str(), "tmpfs", 0, ("size=" + size).c_str()) != 0) {
      *why = absl::StrCat("cannot mount a tmpfs (", strerror(errno), "); needs root");
      return false;
    }
    mounts_.push_back(path);
    return true;
  }

  StoreProcess StartStore(const std::string& spill_dir, std::vector<std::string> extra = {},
                          const std::string& capacity = "256MiB") {
    auto s = StoreProcess::Start(dir_, Options(spill_dir, std::move(extra), capacity));
    EXPECT_TRUE(s.ok()) << s.status();
    return std::move(*s);
  }
  StoreProcessOptions Options(const std::string& spill_dir, std::vector<std::string> extra,
                              const std::string& capacity) {
    StoreProcessOptions o;
    o.name = absl::StrCat("store", ++starts_);
    o.pool_bytes = "4MiB";  // 16 slots: every Put evicts
    o.slot_bytes = "256KiB";
    o.spill_dir = spill_dir;
    o.spill_capacity = capacity;
    o.env["UCX_TLS"] = "sm,self";
    o.extra_args = {"--spill-retry-ms=200"};
    for (auto& e : extra) o.extra_args.push_back(std::move(e));
    return o;
  }

  static std::unique_ptr<StoreClient> Client(const StoreProcess& s) {
    return testing::ConnectStoreClient(s.address());
  }

  // Puts chain `seed` (kChain synthetic blocks); returns how many were stored.
  static size_t PutChain(StoreClient& c, uint32_t seed) {
    std::vector<BlockKey> keys = TestKeys(seed, kChain);
    std::vector<std::vector<uint8_t>> data(kChain, std::vector<uint8_t>(kBlock));
    std::vector<const void*> src;
    for (uint32_t i = 0; i < kChain; ++i) {
      FillSyntheticBlock(keys[i], data[i].data(), kBlock);
      src.push_back(data[i].data());
    }
    auto r = c.Put(TestNamespace(), keys, ChainParents(TestNamespace(), keys), src, kBlock);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->stored : 0;
  }

  // Reads chain `seed` back; every block it gets must be exactly the block put (never wrong
  // bytes). Returns the hit count.
  static size_t GetChain(StoreClient& c, uint32_t seed) {
    std::vector<BlockKey> keys = TestKeys(seed, kChain);
    std::vector<std::vector<uint8_t>> data(kChain, std::vector<uint8_t>(kBlock, 0));
    std::vector<void*> dst;
    for (auto& d : data) dst.push_back(d.data());
    auto got = c.Get(TestNamespace(), keys, dst, kBlock);
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return 0;
    for (size_t i = 0; i < *got; ++i) {
      EXPECT_TRUE(IsSyntheticBlock(keys[i], data[i].data(), kBlock))
          << "wrong bytes for block " << i << " of chain " << seed;
    }
    return *got;
  }

  // A metric's value from /metrics (-1 if absent).
  static double Metric(const StoreProcess& s, const std::string& name) {
    httplib::Client http("127.0.0.1", s.metrics_port());
    auto res = http.Get("/metrics");
    if (!res || res->status != 200) return -1;
    std::smatch m;
    const std::regex re("(^|\n)" + name + " ([0-9.e+-]+)");
    return std::regex_search(res->body, m, re) ? std::stod(m[2]) : -1;
  }

  // The store serves: a new chain goes in and comes back exact, from memory.
  void ExpectServesFromMemory(StoreProcess& s, uint32_t seed) {
    auto c = Client(s);
    EXPECT_EQ(PutChain(*c, seed), kChain) << s.log();
    EXPECT_EQ(GetChain(*c, seed), kChain) << s.log();
    EXPECT_TRUE(s.process().Running());
  }

  // Spills 12 chains (24 MiB, past RocksDB's write buffers: blob and table files on disk) and
  // stops the store gracefully.
  void WriteAndStop(const std::string& spill) {
    // Evictions wait for the spiller: every block reaches the disk.
    StoreProcess store = StartStore(spill, {"--spill-wait-ms=1000"}, kSmallCapacity);
    auto client = Client(store);
    for (uint32_t seed = 1; seed <= 12; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
    auto st = store.process().Signal(SIGTERM, absl::Seconds(20));
    ASSERT_TRUE(st.has_value() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << store.log();
  }

  static size_t Count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
    return n;
  }

  std::string dir_;
  std::vector<std::string> mounts_;
  std::string immutable_;
  int starts_ = 0;
};

// Issue 15, case 1: the disk fills up (the store never fills it itself, so something else
// does), the store is killed on the full disk and restarted there (RocksDB used to assert at
// start-up), then the disk gets room again.
TEST_F(SpillFaultTest, FullDiskKill9AndRestart) {
  std::string why;
  if (!MountTmpfs("disk", "64m", &why)) GTEST_SKIP() << why;
  const std::string disk = dir_ + "/disk", spill = disk + "/spill";
  StoreProcess store = StartStore(spill);  // capacity 256 MiB on a 64 MiB disk
  EXPECT_NE(store.log().find("is more than"), std::string::npos) << store.log();
  auto client = Client(store);
  for (uint32_t seed = 1; seed <= 4; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
  EXPECT_TRUE(WaitFor([&] { return Metric(store, "kvtier_store_spill_writes_total") >= 1; },
                      absl::Seconds(10)))
      << store.log();
  EXPECT_GT(fs::space(disk).available, 0u) << "the store filled the disk itself";
  // Another writer fills the disk completely while the store spills.
  Run("dd if=/dev/zero of=" + disk + "/filler bs=1M count=64");
  for (uint32_t seed = 11; seed <= 20; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
  EXPECT_EQ(GetChain(*client, 20), kChain);                             // from memory
  for (uint32_t seed = 1; seed <= 20; ++seed) GetChain(*client, seed);  // exact or missing
  EXPECT_TRUE(store.process().Running()) << store.log();
  // A few lines about it, not one per block.
  EXPECT_LE(Count(store.log(), "\n"), 100u) << store.log();
  ASSERT_TRUE(store.process().Signal(SIGKILL, absl::Seconds(5)).has_value());

  StoreProcess again = StartStore(spill);
  ExpectServesFromMemory(again, 30);
  // Room again: the tier comes back on its own and spills.
  fs::remove(disk + "/filler");
  ASSERT_TRUE(
      WaitFor([&] { return Metric(again, "kvtier_store_spill_online") == 1; }, absl::Seconds(20)))
      << again.log();
  auto c2 = Client(again);
  const double writes = Metric(again, "kvtier_store_spill_writes_total");
  for (uint32_t seed = 31; seed <= 34; ++seed) EXPECT_EQ(PutChain(*c2, seed), kChain);
  EXPECT_TRUE(WaitFor([&] { return Metric(again, "kvtier_store_spill_writes_total") > writes; },
                      absl::Seconds(10)))
      << again.log();
  EXPECT_TRUE(again.process().Running());
}

// Issue 15, case 2: the spill directory becomes unwritable while the store serves.
TEST_F(SpillFaultTest, UnwritableDirectoryWhileServing) {
  const std::string spill = dir_ + "/spill";
  StoreProcess store = StartStore(spill);
  auto client = Client(store);
  for (uint32_t seed = 1; seed <= 4; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
  ASSERT_TRUE(WaitFor([&] { return Metric(store, "kvtier_store_spill_writes_total") >= 8; },
                      absl::Seconds(10)));
  if (Run("chattr -R +i " + spill) != 0) {
    GTEST_SKIP() << "chattr +i is not supported on the file system of " << spill;
  }
  immutable_ = spill;
  for (uint32_t seed = 5; seed <= 16; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
  ASSERT_TRUE(
      WaitFor([&] { return Metric(store, "kvtier_store_spill_online") == 0; }, absl::Seconds(10)))
      << store.log();
  EXPECT_GE(Metric(store, "kvtier_store_spill_errors_total"), 1);
  for (uint32_t seed = 1; seed <= 16; ++seed) GetChain(*client, seed);  // exact or missing
  ExpectServesFromMemory(store, 40);
  absl::SleepFor(absl::Seconds(2));  // retries fail meanwhile (the files cannot be deleted)
  EXPECT_TRUE(store.process().Running()) << store.log();
  EXPECT_EQ(Count(store.log(), "spill tier offline"), 1u) << store.log();

  Run("chattr -R -i " + spill);
  immutable_.clear();
  ASSERT_TRUE(
      WaitFor([&] { return Metric(store, "kvtier_store_spill_online") == 1; }, absl::Seconds(20)))
      << store.log();
  for (uint32_t seed = 41; seed <= 44; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
  EXPECT_TRUE(store.process().Running());
}

// Issue 15, case 3: a spill directory that cannot be opened at start-up: the store starts from
// memory only and says so, unless spill is required.
TEST_F(SpillFaultTest, UnopenableDirectoryAtStart) {
  std::string why;
  if (!MountTmpfs("ro", "8m", &why)) GTEST_SKIP() << why;
  const std::string mnt = dir_ + "/ro";
  ASSERT_EQ(mount(nullptr, mnt.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, "size=8m"), 0)
      << strerror(errno);
  const std::string spill = mnt + "/spill";
  StoreProcess store = StartStore(spill);
  EXPECT_EQ(Metric(store, "kvtier_store_spill_online"), 0);
  EXPECT_NE(store.log().find("STARTING WITHOUT SPILL"), std::string::npos) << store.log();
  ExpectServesFromMemory(store, 1);
  // Writable again: the tier comes up without a restart.
  ASSERT_EQ(mount(nullptr, mnt.c_str(), nullptr, MS_REMOUNT, "size=8m"), 0) << strerror(errno);
  ASSERT_TRUE(
      WaitFor([&] { return Metric(store, "kvtier_store_spill_online") == 1; }, absl::Seconds(20)))
      << store.log();

  // Required: a clear error and a non-zero exit.
  ASSERT_TRUE(MountTmpfs("ro2", "8m", &why)) << why;
  const std::string mnt2 = dir_ + "/ro2";
  ASSERT_EQ(mount(nullptr, mnt2.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, "size=8m"), 0)
      << strerror(errno);
  auto s = StoreProcess::Start(dir_, Options(mnt2 + "/spill", {"--spill-required=true"}, "256MiB"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("spill tier is required"), std::string::npos) << s.status();
}

// Issue 15, case 4: blob files truncated or bit-flipped between runs. Reads are never wrong;
// the tier keeps spilling afterwards.
TEST_F(SpillFaultTest, DamagedBlobFilesBetweenRuns) {
  const std::string spill = dir_ + "/spill";
  for (const bool truncate : {false, true}) {
    SCOPED_TRACE(truncate ? "truncated" : "bit-flipped");
    fs::remove_all(spill);
    WriteAndStop(spill);
    size_t damaged = 0;
    for (const auto& f : fs::directory_iterator(spill + "/db")) {
      if (f.path().extension() != ".blob") continue;
      const uintmax_t size = fs::file_size(f.path());
      if (truncate) {
        fs::resize_file(f.path(), size / 2);
      } else {
        std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
        for (uintmax_t off = 4096; off < size; off += 64 * 1024) {
          io.seekp(static_cast<std::streamoff>(off));
          io.put(static_cast<char>(0x5a));
        }
      }
      ++damaged;
    }
    ASSERT_GT(damaged, 0u);
    StoreProcess store = StartStore(spill, {}, kSmallCapacity);
    auto client = Client(store);
    for (uint32_t seed = 1; seed <= 12; ++seed) GetChain(*client, seed);  // exact or missing
    for (uint32_t seed = 1; seed <= 12; ++seed) GetChain(*client, seed);  // and again
    // Spilling and deleting go on afterwards.
    const double writes = Metric(store, "kvtier_store_spill_writes_total");
    for (uint32_t seed = 20; seed <= 26; ++seed) EXPECT_EQ(PutChain(*client, seed), kChain);
    ASSERT_TRUE(WaitFor(
        [&] {
          return Metric(store, "kvtier_store_spill_online") == 1 &&
                 Metric(store, "kvtier_store_spill_writes_total") > writes;
        },
        absl::Seconds(20)))
        << store.log();
    for (uint32_t seed = 20; seed <= 26; ++seed) GetChain(*client, seed);
    EXPECT_TRUE(store.process().Running()) << store.log();
    const double faults = Metric(store, "kvtier_store_checksum_failures_total") +
                          Metric(store, "kvtier_store_spill_quarantines_total") +
                          Metric(store, "kvtier_store_spill_errors_total");
    EXPECT_GE(faults, 1) << store.log();
  }
}

// Issue 15, case 5: a missing or damaged .sst, a truncated MANIFEST, a missing CURRENT: the
// database is moved aside (reported), a fresh one serves, and the store starts every time.
TEST_F(SpillFaultTest, DamagedDatabaseIsQuarantinedNotFatalNorSilentlyEmpty) {
  const std::string spill = dir_ + "/spill";
  struct Damage {
    const char* name;
    std::function<void(const fs::path& db)> apply;
  };
  auto first = [](const fs::path& db, const std::string& prefix, const std::string& ext) {
    for (const auto& f : fs::directory_iterator(db)) {
      const std::string n = f.path().filename().string();
      if (n.rfind(prefix, 0) == 0 && f.path().extension() == ext) return f.path();
    }
    return fs::path();
  };
  const std::vector<Damage> damages = {
      {"missing sst", [&](const fs::path& db) { fs::remove(first(db, "", ".sst")); }},
      {"truncated MANIFEST",
       [&](const fs::path& db) {
         fs::path m = first(db, "MANIFEST-", "");
         fs::resize_file(m, std::min<uintmax_t>(fs::file_size(m), 64));
       }},
      {"missing CURRENT", [&](const fs::path& db) { fs::remove(db / "CURRENT"); }},
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.name);
    fs::remove_all(spill);
    WriteAndStop(spill);
    d.apply(spill + "/db");
    for (int start = 0; start < 2; ++start) {  // and it stays so on the next start
      StoreProcess store = StartStore(spill, {}, kSmallCapacity);
      EXPECT_EQ(Metric(store, "kvtier_store_spill_online"), 1) << store.log();
      if (start == 0) {
        EXPECT_EQ(Metric(store, "kvtier_store_spill_quarantines_total"), 1) << store.log();
        EXPECT_NE(store.log().find("moved to"), std::string::npos) << store.log();
      }
      auto client = Client(store);
      for (uint32_t seed = 1; seed <= 12; ++seed) GetChain(*client, seed);  // exact or missing
      ExpectServesFromMemory(store, 30 + start);
      ASSERT_TRUE(store.process().Signal(SIGTERM, absl::Seconds(20)).has_value());
    }
    EXPECT_TRUE(fs::exists(spill + "/quarantine"));
  }
}

// Issue 15, item 8: `kvtier store demo` with absurd sizes gets a clear error before it
// allocates anything (it died of std::bad_alloc, or ran with "0 tokens per block").
TEST_F(SpillFaultTest, DemoRejectsBadSizesBeforeAllocating) {
  StoreProcess store = StartStore("");
  struct Case {
    std::string flag, message;
  };
  for (const Case& c : std::vector<Case>{{"--block-bytes=1TiB", "is outside 1..262144"},
                                         {"--block-tokens=0", "must be at least 1"},
                                         {"--block-bytes=0", "is outside 1..262144"}}) {
    const std::string out = dir_ + "/demo.out";
    const int rc =
        std::system((std::string(KVTIER_BIN_DIR) + "/kvtier store demo --plaintext --store " +
                     store.address() + " " + c.flag + " >" + out + " 2>&1")
                        .c_str());
    ASSERT_TRUE(WIFEXITED(rc)) << c.flag << ": " << FileTail(out);
    EXPECT_NE(WEXITSTATUS(rc), 0) << c.flag << ": " << FileTail(out);
    EXPECT_NE(FileTail(out).find(c.message), std::string::npos) << c.flag << ": " << FileTail(out);
  }
  EXPECT_TRUE(store.process().Running());
}

}  // namespace
}  // namespace kvtier
