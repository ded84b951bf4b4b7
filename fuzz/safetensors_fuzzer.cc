// libFuzzer target: a safetensors file (engine/safetensors.h), header and data, as found in any
// checkpoint a worker is pointed at. The input is written to a file and opened as the engine
// opens one (mmap). Every tensor of a file that opens must lie inside the file, with as many
// bytes as its shape and dtype need; its bytes are read (converted to fp32) to prove it.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "engine/safetensors.h"
#include "fuzz/fuzz_util.h"

namespace kvtier::engine {
namespace {

void Check(const uint8_t* data, size_t size) {
  const std::string path = fuzz::WriteInputFile("model.safetensors", fuzz::AsText(data, size));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    if (file.status().message().empty()) std::abort();
    return;
  }
  for (const auto& [name, t] : (*file)->tensors()) {
    const size_t elem = DTypeBytes(t.dtype);
    if (t.nbytes != static_cast<uint64_t>(t.NumElements()) * elem || t.nbytes + 8 > size) {
      std::abort();
    }
    // The first and last few elements: a valid header may describe a large zero-filled tensor.
    const size_t count = t.nbytes / elem;
    const size_t n = std::min<size_t>(count, 64);
    std::vector<float> out(n);
    ConvertToFloat(t.dtype, t.data, n, out.data());
    ConvertToFloat(t.dtype, t.data + (count - n) * elem, n, out.data());
  }
}

}  // namespace
}  // namespace kvtier::engine

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::engine::Check(data, size);
  return 0;
}
