#include "transport/net_devices.h"

#include "gtest/gtest.h"

namespace kvtier::transport {
namespace {

TEST(NetDevicesTest, LoopbackHostsGiveTheLoopbackInterface) {
  EXPECT_EQ(*ResolveNetDevices("", {"127.0.0.1"}), "lo");
  EXPECT_EQ(*ResolveNetDevices("", {"localhost"}), "lo");
  EXPECT_EQ(*ResolveNetDevices("", {"127.0.0.1", "127.0.0.2"}), "lo");  // once
  EXPECT_EQ(*ResolveNetDevices("127.0.0.1", {"0.0.0.0"}), "lo");  // an address names its device
}

TEST(NetDevicesTest, WildcardAndAllMeanEveryDevice) {
  EXPECT_EQ(*ResolveNetDevices("", {"0.0.0.0"}), "");
  EXPECT_EQ(*ResolveNetDevices("", {"[::]"}), "");
  EXPECT_EQ(*ResolveNetDevices("all", {"127.0.0.1"}), "");
}

TEST(NetDevicesTest, NamesArePassedAfterACheck) {
  EXPECT_EQ(*ResolveNetDevices("lo", {"0.0.0.0"}), "lo");
  EXPECT_EQ(*ResolveNetDevices("mlx5_0:1", {}), "mlx5_0:1");  // UCX's to check
}

TEST(NetDevicesTest, UnknownInterfacesAndAddressesAreClearErrors) {
  auto name = ResolveNetDevices("nosuch0", {});
  EXPECT_EQ(name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(name.status().message().find("nosuch0"), std::string::npos);
  auto addr = ResolveNetDevices("203.0.113.77", {});  // TEST-NET-3: no interface holds it
  EXPECT_EQ(addr.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ResolveNetDevices("", {"no-such-host.invalid"}).ok());
}

}  // namespace
}  // namespace kvtier::transport
