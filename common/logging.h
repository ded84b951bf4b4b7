// Logging (spdlog) and invariant checks.
//
// KVTIER_CHECK(cond, "fmt {}", args...) aborts the process with the message when `cond` is
// false; use it for invariants whose violation means a bug, never for bad input.
#ifndef KVTIER_COMMON_LOGGING_H_
#define KVTIER_COMMON_LOGGING_H_

#include <cstdlib>

#include "spdlog/spdlog.h"

#define KVTIER_CHECK(cond, ...)                                                    \
  do {                                                                             \
    if (!(cond)) [[unlikely]] {                                                    \
      spdlog::critical("CHECK failed at {}:{}: {}: {}", __FILE__, __LINE__, #cond, \
                       ::fmt::format(__VA_ARGS__));                                \
      spdlog::default_logger()->flush();                                           \
      std::abort();                                                                \
    }                                                                              \
  } while (0)

namespace kvtier {

// Sets the global log level from a name (trace, debug, info, warn, error, off). Unknown names
// leave the level unchanged and return false.
bool SetLogLevel(const std::string& level);

// Sends log lines to stderr (spdlog's default logger writes to stdout), so that a program's
// stdout carries only its output. Call first thing in main().
void LogToStderr();

}  // namespace kvtier

#endif  // KVTIER_COMMON_LOGGING_H_
