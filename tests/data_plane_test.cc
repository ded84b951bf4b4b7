// The data plane listens only where it is configured (issue 10, section 2): UCX's TCP transport
// opens a listener on every network device it may use, without authentication. A real
// kvtier-store, and a store client in this process, configured for loopback (the default when
// gRPC listens on 127.0.0.1): every listening TCP socket they own, read from /proc, is on a
// loopback address, and blocks still move over UCX's TCP transport.
#include <arpa/inet.h>
#include <dirent.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
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

struct Listener {
  std::string address;  // as inet_ntop writes it
  int port = 0;
  bool loopback = false;
};

// The inodes of the sockets process `pid` holds open.
std::set<std::string> SocketInodes(pid_t pid) {
  std::set<std::string> out;
  const std::string dir = absl::StrCat("/proc/", pid, "/fd");
  for (const auto& fd : std::filesystem::directory_iterator(dir)) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) {
      out.insert(target.substr(8, target.size() - 9));
    }
  }
  return out;
}

// Every TCP socket in LISTEN state that process `pid` owns (/proc/<pid>/net/tcp{,6} lists the
// sockets of its network namespace; its fds tell which are its own).
std::vector<Listener> Listeners(pid_t pid) {
  const std::set<std::string> inodes = SocketInodes(pid);
  std::vector<Listener> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/net/", table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string slot, local, remote, state, queues, timer, retr, uid, timeout, inode;
      f >> slot >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state != "0A" || !inodes.contains(inode)) continue;  // 0A: LISTEN
      const std::string hex = local.substr(0, local.find(':'));
      Listener l;
      l.port = std::stoi(local.substr(local.find(':') + 1), nullptr, 16);
      char text[INET6_ADDRSTRLEN] = {};
      if (hex.size() == 8) {  // one 32-bit word in host order
        in_addr a{};
        a.s_addr = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
        inet_ntop(AF_INET, &a, text, sizeof(text));
        l.loopback = (ntohl(a.s_addr) >> 24) == 127;
      } else {  // four 32-bit words in host order
        in6_addr a{};
        for (int w = 0; w < 4; ++w) {
          const uint32_t v = static_cast<uint32_t>(std::stoul(hex.substr(8 * w, 8), nullptr, 16));
          std::memcpy(&a.s6_addr[4 * w], &v, 4);
        }
        inet_ntop(AF_INET6, &a, text, sizeof(text));
        l.loopback = IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127);
      }
      l.address = text;
      out.push_back(l);
    }
  }
  return out;
}

std::string Describe(const std::vector<Listener>& ls) {
  std::string s;
  for (const Listener& l : ls) absl::StrAppend(&s, " ", l.address, ":", l.port);
  return s;
}

// Whether this host has an up interface with an address that is not loopback (else "all"
// cannot be told from loopback).
bool HasNonLoopbackInterface() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return false;
  bool found = false;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr != nullptr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
        !(i->ifa_flags & IFF_LOOPBACK)) {
      found = true;
    }
  }
  freeifaddrs(list);
  return found;
}

class DataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(DataPlaneTest, AStoreAndAClientOnLoopbackListenOnlyOnLoopback) {
  StoreProcessOptions o;
  o.env["UCX_TLS"] = "tcp,self";  // the data plane goes over UCX's TCP transport
  o.pool_bytes = "16MiB";
  auto store = StoreProcess::Start(dir_, o);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<Listener> listeners = Listeners(store->process().pid());
  // gRPC and UCX's TCP transport: before the fix, UCX listened on every interface too.
  EXPECT_GE(listeners.size(), 2u) << Describe(listeners);
  for (const Listener& l : listeners) {
    EXPECT_TRUE(l.loopback) << "the store listens on " << l.address << ":" << l.port
                            << "; all:" << Describe(listeners);
  }

  // A client in this process: its UCX worker listens too, and only on loopback; blocks move.
  setenv("UCX_TLS", "tcp,self", 1);
  std::unique_ptr<StoreClient> client = testing::ConnectStoreClient(store->address());
  unsetenv("UCX_TLS");
  ASSERT_NE(client, nullptr);
  const std::vector<BlockKey> keys = testing::TestKeys(7, 4);
  constexpr size_t kBytes = 64 * 1024;
  testing::SyntheticBlocks blocks(keys, kBytes);
  const NamespaceId ns = testing::TestNamespace();
  auto put = client->Put(ns, keys, ChainParents(ns, keys), blocks.src, kBytes);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->stored, keys.size());
  blocks.Clear();
  auto got = client->Get(ns, keys, blocks.dst, kBytes);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_TRUE(IsSyntheticBlock(keys[i], blocks.data[i].data(), kBytes)) << i;
  }
  const std::vector<Listener> mine = Listeners(getpid());
  EXPECT_GE(mine.size(), 1u);
  for (const Listener& l : mine) {
    EXPECT_TRUE(l.loopback) << "the client listens on " << l.address << ":" << l.port;
  }
}

// "all" is the old behaviour: a listener on another interface (which the check above catches).
TEST_F(DataPlaneTest, AllOpensEveryInterface) {
  if (!HasNonLoopbackInterface()) GTEST_SKIP() << "this host has only loopback";
  StoreProcessOptions o;
  o.env["UCX_TLS"] = "tcp,self";
  o.pool_bytes = "16MiB";
  o.extra_args = {"--data-interface", "all"};
  auto store = StoreProcess::Start(dir_, o);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<Listener> listeners = Listeners(store->process().pid());
  bool outside = false;
  for (const Listener& l : listeners) outside |= !l.loopback;
  EXPECT_TRUE(outside) << Describe(listeners);
}

TEST_F(DataPlaneTest, AnUnknownInterfaceIsAClearStartUpError) {
  StoreProcessOptions o;
  o.pool_bytes = "16MiB";
  o.extra_args = {"--data-interface", "nosuch0"};
  o.start_timeout = absl::Seconds(10);
  auto store = StoreProcess::Start(dir_, o);
  ASSERT_FALSE(store.ok());
  std::ifstream log(dir_ + "/store.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("nosuch0"), std::string::npos) << text.str();
}

}  // namespace
}  // namespace kvtier
