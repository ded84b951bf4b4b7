// libFuzzer target: YAML config files (--config FILE) read through the option tables of
// common/options.h: the store's, the router's, both workers' and the local cluster's
// (deploy/cluster.h). The input is written to a file and given to each service's flags as
// `--config FILE`. Any outcome is fine but a crash, a hang or an error without a message.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cachestore/store_config.h"
#include "deploy/cluster.h"
#include "fuzz/fuzz_util.h"
#include "router/router_options.h"
#include "worker/worker_options.h"

namespace kvtier {
namespace {

// Flags: an OptionFlags class, constructed from `flags_args`.
template <typename Flags, typename... FlagsArgs>
void Resolve(const std::vector<std::string>& args, FlagsArgs... flags_args) {
  Flags flags(flags_args...);
  auto options = flags.Parse(args);
  if (!options.ok() && options.status().message().empty()) std::abort();
}

void Check(const uint8_t* data, size_t size) {
  const std::string path = fuzz::WriteInputFile("config.yaml", fuzz::AsText(data, size));
  const std::vector<std::string> args = {"--config", path};
  Resolve<cachestore::StoreFlags>(args);
  Resolve<router::RouterFlags>(args);
  Resolve<worker::WorkerFlags>(args, "prefill");
  Resolve<worker::WorkerFlags>(args, "decode");
  Resolve<deploy::ClusterFlags>(args);
  absl::StatusOr<deploy::ClusterConfig> cluster = deploy::LoadClusterConfig(path);
  if (!cluster.ok() && cluster.status().message().empty()) std::abort();
}

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::Check(data, size);
  return 0;
}
