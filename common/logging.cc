#include "common/logging.h"

#include "spdlog/sinks/stdout_color_sinks.h"

namespace kvtier {

bool SetLogLevel(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return false;
  spdlog::set_level(lvl);
  return true;
}

void LogToStderr() { spdlog::set_default_logger(spdlog::stderr_color_mt("kvtier")); }

}  // namespace kvtier
