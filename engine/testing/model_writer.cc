#include "engine/testing/model_writer.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "engine/weights.h"
#include "nlohmann/json.hpp"

namespace kvtier::testing {
namespace {

using engine::DType;
using engine::ModelConfig;
using engine::TensorRole;
using engine::TensorSpec;

uint64_t Mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

// The value of element `i` of a tensor is center + half_width * u, u uniform in [-1, 1) from
// splitmix64 at counter i of the tensor's stream. Arithmetic in double on exactly
// representable operands (24-bit u, fp32 half_width), so the result does not depend on the
// compiler's contraction or vectorization choices.
struct InitParams {
  uint64_t stream;
  double center;
  double half_width;  // an fp32 value
};

InitParams ParamsFor(const TensorSpec& spec, const ModelConfig& c, uint64_t seed) {
  const double sqrt3 = std::sqrt(3.0);
  double center = 0.0;
  double half = 0.0;
  switch (spec.role) {
    case TensorRole::kEmbed:
      half = sqrt3;  // std 1
      break;
    case TensorRole::kNorm:
      center = 1.0;
      half = 0.1;
      break;
    case TensorRole::kLinear:
      half = sqrt3 / std::sqrt(static_cast<double>(spec.shape[1]));  // std 1/sqrt(fan_in)
      break;
    case TensorRole::kBias:
      half = sqrt3 * 0.1;  // std 0.1
      break;
    case TensorRole::kLmHead:
      half = sqrt3 * 4.0 / std::sqrt(static_cast<double>(c.hidden_size));  // std 4/sqrt(hidden)
      break;
  }
  const uint64_t name_hash = XXH3_64bits(spec.name.data(), spec.name.size());
  return {Mix64(Mix64(seed) ^ (name_hash + kGolden)), center,
          static_cast<double>(static_cast<float>(half))};
}

inline float RandomValue(const InitParams& p, uint64_t i) {
  const uint64_t r = Mix64(p.stream + (i + 1) * kGolden);
  const double u = static_cast<double>(static_cast<int64_t>(r >> 40)) * 0x1p-23 - 1.0;
  return static_cast<float>(p.center + p.half_width * u);
}

void Generate(const InitParams& p, uint64_t first, size_t n, DType dtype, uint8_t* out) {
  switch (dtype) {
    case DType::kF32:
      for (size_t k = 0; k < n; ++k) {
        const float v = RandomValue(p, first + k);
        std::memcpy(out + 4 * k, &v, 4);
      }
      return;
    case DType::kBF16:
      for (size_t k = 0; k < n; ++k) {
        const uint16_t v = engine::FloatToBf16(RandomValue(p, first + k));
        std::memcpy(out + 2 * k, &v, 2);
      }
      return;
    case DType::kF16:
      for (size_t k = 0; k < n; ++k) {
        const uint16_t v = engine::FloatToF16(RandomValue(p, first + k));
        std::memcpy(out + 2 * k, &v, 2);
      }
      return;
  }
}

absl::Status ErrnoError(absl::string_view what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

bool PWriteAll(int fd, const uint8_t* p, size_t n, uint64_t offset) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return true;
}

std::string TempName(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
}

// Closes `fd`, written at the temporary name `tmp`, and renames `tmp` to `path`; removes `tmp`
// on failure.
absl::Status CloseAndRename(int fd, const std::string& tmp, const std::string& path) {
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot close", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot rename to", path, err);
  }
  return absl::OkStatus();
}

// Writes one safetensors file holding `specs`, streaming: the header is computed from the
// shapes, then threads generate fixed-size chunks and pwrite them at their offsets, so memory
// use is a few chunks per thread whatever the model size.
absl::Status WriteRandomShard(const std::string& path, const std::vector<const TensorSpec*>& specs,
                              const ModelConfig& config, uint64_t seed, DType dtype) {
  const size_t elem = engine::DTypeBytes(dtype);
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const TensorSpec* s : specs) {
    uint64_t n = elem;
    for (int64_t d : s->shape) n *= static_cast<uint64_t>(d);
    nlohmann::ordered_json t;
    t["dtype"] = engine::DTypeName(dtype);
    t["shape"] = s->shape;
    t["data_offsets"] = {offset, offset + n};
    header[s->name] = t;
    offsets.push_back(offset);
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t data_start = 8 + text.size();
  const uint64_t file_size = data_start + offset;

  std::vector<uint8_t> head(data_start);
  for (int i = 0; i < 8; ++i) head[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  std::memcpy(head.data() + 8, text.data(), text.size());

  const std::string tmp = TempName(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  auto fail = [&](absl::string_view what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoError(what, tmp, err);
  };
  if (::ftruncate(fd, static_cast<off_t>(file_size)) != 0) return fail("cannot size", errno);
  if (!PWriteAll(fd, head.data(), head.size(), 0)) return fail("cannot write", errno);

  // Work items: chunks of at most kChunk elements of one tensor.
  constexpr uint64_t kChunk = uint64_t{1} << 20;
  struct Item {
    size_t tensor;
    uint64_t first;
    uint64_t count;
  };
  std::vector<Item> items;
  std::vector<InitParams> params;
  for (size_t t = 0; t < specs.size(); ++t) {
    params.push_back(ParamsFor(*specs[t], config, seed));
    uint64_t n = 1;
    for (int64_t d : specs[t]->shape) n *= static_cast<uint64_t>(d);
    for (uint64_t first = 0; first < n; first += kChunk) {
      items.push_back({t, first, std::min(kChunk, n - first)});
    }
  }
  // One worker per core, each with its own buffer, takes the next item until none is left.
  const int workers = static_cast<int>(
      std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), items.size()));
  std::atomic<size_t> next{0};
  std::atomic<int> write_errno{0};
  ParallelFor(workers, workers, [&](size_t) {
    std::vector<uint8_t> buf(kChunk * elem);
    for (size_t i = next.fetch_add(1); i < items.size() && write_errno.load() == 0;
         i = next.fetch_add(1)) {
      const Item& it = items[i];
      Generate(params[it.tensor], it.first, it.count, dtype, buf.data());
      const uint64_t at = data_start + offsets[it.tensor] + it.first * elem;
      if (!PWriteAll(fd, buf.data(), it.count * elem, at)) {
        int expected = 0;
        write_errno.compare_exchange_strong(expected, errno != 0 ? errno : EIO);
      }
    }
  });
  if (write_errno.load() != 0) return fail("cannot write", write_errno.load());
  return CloseAndRename(fd, tmp, path);
}

const char* TorchDTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
  }
  return "bfloat16";
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = TempName(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  if (!PWriteAll(fd, reinterpret_cast<const uint8_t*>(text.data()), text.size(), 0)) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoError("cannot write", tmp, err);
  }
  return CloseAndRename(fd, tmp, path);
}

absl::Status WriteRandomModel(const ModelConfig& config, uint64_t seed, DType dtype,
                              const std::string& model_dir, int shards) {
  // Validate through the same parser a reader uses.
  KVTIER_RETURN_IF_ERROR(ModelConfig::FromJson(config.ToJson()).status());
  ModelConfig out = config;
  out.torch_dtype = TorchDTypeName(dtype);

  const std::vector<TensorSpec> specs = engine::ExpectedTensors(out);
  if (shards < 1 || static_cast<size_t>(shards) > specs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shards must be between 1 and ", specs.size(), ", got ", shards));
  }
  std::error_code ec;
  std::filesystem::create_directories(model_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", model_dir, ": ", ec.message()));
  }

  // Split by roughly equal bytes: tensor t goes to the shard holding its first byte's share
  // of the total, and every shard gets at least one tensor.
  const size_t elem = engine::DTypeBytes(dtype);
  std::vector<uint64_t> bytes(specs.size());
  uint64_t total = 0;
  for (size_t t = 0; t < specs.size(); ++t) {
    bytes[t] = elem;
    for (int64_t d : specs[t].shape) bytes[t] *= static_cast<uint64_t>(d);
    total += bytes[t];
  }
  std::vector<std::vector<const TensorSpec*>> files(shards);
  uint64_t before = 0;  // bytes of the tensors already placed
  int shard = 0;
  for (size_t t = 0; t < specs.size(); ++t) {
    // Move on once this shard has its share of the bytes, or when every later shard needs
    // one of the remaining tensors.
    using U128 = unsigned __int128;
    const bool full = U128{before} * shards >= U128{total} * (shard + 1);
    const bool must = specs.size() - t <= static_cast<size_t>(shards - 1 - shard);
    if (shard < shards - 1 && !files[shard].empty() && (full || must)) ++shard;
    files[shard].push_back(&specs[t]);
    before += bytes[t];
  }

  const std::string single = model_dir + "/model.safetensors";
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  if (shards == 1) {
    KVTIER_RETURN_IF_ERROR(WriteRandomShard(single, files[0], out, seed, dtype));
    std::filesystem::remove(index_path, ec);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (int s = 0; s < shards; ++s) {
      const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
      KVTIER_RETURN_IF_ERROR(WriteRandomShard(model_dir + "/" + name, files[s], out, seed, dtype));
      for (const TensorSpec* spec : files[s]) weight_map[spec->name] = name;
    }
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    KVTIER_RETURN_IF_ERROR(WriteFileAtomically(index_path, index.dump(2) + "\n"));
    // A stale single file would take precedence over the index.
    std::filesystem::remove(single, ec);
  }

  nlohmann::ordered_json gen;
  gen["bos_token_id"] = out.bos_token_id >= 0 ? nlohmann::ordered_json(out.bos_token_id)
                                              : nlohmann::ordered_json(nullptr);
  if (out.eos_token_ids.empty()) {
    gen["eos_token_id"] = nullptr;
  } else if (out.eos_token_ids.size() == 1) {
    gen["eos_token_id"] = out.eos_token_ids[0];
  } else {
    gen["eos_token_id"] = out.eos_token_ids;
  }
  gen["do_sample"] = false;
  KVTIER_RETURN_IF_ERROR(
      WriteFileAtomically(model_dir + "/generation_config.json", gen.dump(2) + "\n"));
  // config.json last: a directory is loadable only once its weights are complete.
  return WriteFileAtomically(model_dir + "/config.json", out.ToJson());
}

}  // namespace kvtier::testing
