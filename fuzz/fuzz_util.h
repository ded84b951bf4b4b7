// Helpers shared by the libFuzzer targets of fuzz/ (docs/testing.md, "Fuzzers"): a file holding
// the input, for parsers that read a path.
//
// Header-only (fuzz/ has no library); for the one thread libFuzzer runs inputs on.
#ifndef KVTIER_FUZZ_FUZZ_UTIL_H_
#define KVTIER_FUZZ_FUZZ_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvtier::fuzz {

// A directory of this process's own (under $TMPDIR or /tmp), removed at exit.
inline const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/kvtier-fuzz-XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    auto* d = new std::string(pattern);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(ScratchDir(), ec);
    });
    return d;
  }();
  return *dir;
}

// Writes `data` to the file `name` of ScratchDir() (replacing it) and returns its path.
inline std::string WriteInputFile(absl::string_view name, absl::string_view data) {
  std::string path = absl::StrCat(ScratchDir(), "/", name);
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(data.data(), data.size());
  return path;
}

inline absl::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace kvtier::fuzz

#endif  // KVTIER_FUZZ_FUZZ_UTIL_H_
