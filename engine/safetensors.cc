#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvtier::engine {
namespace {

using Json = nlohmann::json;

// Largest header accepted: real checkpoints have headers of tens of KiB; the cap keeps a corrupt
// length from making us parse gigabytes.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

inline uint32_t F32Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float F32FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Writes all of `data` at the current offset of `fd`.
bool WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// product(shape) * elem_bytes, or nullopt on overflow or a negative dimension.
std::optional<uint64_t> ShapeBytes(const std::vector<int64_t>& shape, size_t elem_bytes) {
  unsigned __int128 n = elem_bytes;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    n *= static_cast<uint64_t>(d);
    if (n > std::numeric_limits<uint64_t>::max()) return std::nullopt;
  }
  return static_cast<uint64_t>(n);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

size_t DTypeBytes(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype \"", name, "\" (supported: F32, F16, BF16)"));
}

float Bf16ToFloat(uint16_t v) { return F32FromBits(static_cast<uint32_t>(v) << 16); }

uint16_t FloatToBf16(float v) {
  const uint32_t u = F32Bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep the sign and the top payload bits, force it quiet so it stays a NaN.
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  // Round to nearest, ties to even; overflow rounds to infinity as it should.
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

// Half-precision conversions after Marat Dukhan's FP16 library (branch-free, exact, and simple
// enough for the compiler to vectorize). They rely on IEEE fp32 arithmetic in the default
// rounding mode (no -ffast-math).
float F16ToFloat(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  constexpr uint32_t kExpOffset = 0xE0u << 23;
  constexpr float kExpScale = 0x1.0p-112f;
  const float normalized = F32FromBits((two_w >> 4) + kExpOffset) * kExpScale;
  constexpr uint32_t kMagicMask = 126u << 23;
  constexpr float kMagicBias = 0.5f;
  const float denormalized = F32FromBits((two_w >> 17) | kMagicMask) - kMagicBias;
  constexpr uint32_t kDenormCutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < kDenormCutoff ? F32Bits(denormalized) : F32Bits(normalized));
  return F32FromBits(result);
}

uint16_t FloatToF16(float f) {
  constexpr float kScaleToInf = 0x1.0p+112f;
  constexpr float kScaleToZero = 0x1.0p-110f;
  float base = (std::fabs(f) * kScaleToInf) * kScaleToZero;
  const uint32_t w = F32Bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = F32FromBits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = F32Bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

void ConvertToFloat(DType dtype, const void* src, size_t n, float* dst) {
  const auto* s = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, s + 2 * i, sizeof(v));  // the mapping need not be 2-byte aligned
        dst[i] = F32FromBits(static_cast<uint32_t>(v) << 16);
      }
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, s + 2 * i, sizeof(v));
        dst[i] = F16ToFloat(v);
      }
      return;
  }
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto bad = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no such file: ", path));
    return Errno("cannot open", path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = Errno("cannot stat", path);
    ::close(fd);
    return s;
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return bad(absl::StrCat("file too short for a safetensors header (", size, " bytes)"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return Errno("cannot mmap", path);

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->map_ = map;
  file->map_size_ = size;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(base[i]) << (8 * i);
  if (header_len > size - 8) {
    return bad(absl::StrCat("header length ", header_len, " runs past the end of the file (", size,
                            " bytes)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return bad(absl::StrCat("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
                            " bytes"));
  }
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  Json header;
  try {
    header = Json::parse(base + 8, base + 8 + header_len);
  } catch (const Json::exception& e) {
    return bad(absl::StrCat("malformed header JSON: ", e.what()));
  }
  if (!header.is_object()) return bad("header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return bad("__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return bad(absl::StrCat("__metadata__ value of \"", m.key(), "\" is not a string"));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tbad = [&](absl::string_view what) {
      return bad(absl::StrCat("tensor \"", name, "\": ", what));
    };
    if (!entry.is_object()) return tbad("entry is not an object");
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return tbad("missing or non-string \"dtype\"");
    if (sh == entry.end() || !sh->is_array()) return tbad("missing or non-list \"shape\"");
    if (off == entry.end() || !off->is_array() || off->size() != 2) {
      return tbad("\"data_offsets\" must be a list of two integers");
    }
    const std::string dtype_name = dt->get<std::string>();
    absl::StatusOr<DType> dtype = ParseDType(dtype_name);
    if (!dtype.ok()) {
      return tbad(
          absl::StrCat("unsupported dtype \"", dtype_name, "\" (supported: F32, F16, BF16)"));
    }
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    for (const Json& d : *sh) {
      if (!d.is_number_unsigned()) return tbad("shape entries must be non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return tbad("shape entry out of range");
      }
      view.shape.push_back(static_cast<int64_t>(v));
    }
    for (const Json& o : *off) {
      if (!o.is_number_unsigned()) return tbad("data_offsets must be non-negative integers");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return tbad(absl::StrCat("data_offsets [", begin, ", ", end,
                               "] are outside the data section (", data_size, " bytes)"));
    }
    const std::optional<uint64_t> expected = ShapeBytes(view.shape, DTypeBytes(view.dtype));
    if (!expected.has_value() || *expected != end - begin) {
      return tbad(
          absl::StrCat("data_offsets [", begin, ", ", end, "] hold ", end - begin,
                       " bytes but shape ", ShapeString(view.shape), " of ", dtype_name, " needs ",
                       expected.has_value() ? absl::StrCat(*expected) : std::string("too many")));
    }
    view.data = data + begin;
    view.nbytes = static_cast<size_t>(end - begin);
    file->tensors_.emplace(name, std::move(view));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

absl::Status SafetensorsWriter::Add(const std::string& name, DType dtype,
                                    std::vector<int64_t> shape, const void* data, size_t nbytes) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("invalid tensor name \"", name, "\""));
  }
  for (const Entry& e : entries_) {
    if (e.name == name) {
      return absl::AlreadyExistsError(absl::StrCat("tensor \"", name, "\" added twice"));
    }
  }
  const std::optional<uint64_t> expected = ShapeBytes(shape, DTypeBytes(dtype));
  if (!expected.has_value() || *expected != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": ", nbytes,
                                                   " bytes given for shape ", ShapeString(shape),
                                                   " of ", DTypeName(dtype)));
  }
  Entry e{name, dtype, std::move(shape), {}};
  const auto* p = static_cast<const uint8_t*>(data);
  e.bytes.assign(p, p + nbytes);
  entries_.push_back(std::move(e));
  return absl::OkStatus();
}

void SafetensorsWriter::SetMetadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

size_t SafetensorsWriter::data_bytes() const {
  size_t n = 0;
  for (const Entry& e : entries_) n += e.bytes.size();
  return n;
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    nlohmann::ordered_json t;
    t["dtype"] = DTypeName(e.dtype);
    t["shape"] = e.shape;
    t["data_offsets"] = {offset, offset + e.bytes.size()};
    header[e.name] = t;
    offset += e.bytes.size();
  }
  std::string text = header.dump();
  // Like the reference implementation: pad with spaces so the data starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));

  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  bool ok = WriteAll(fd, len, sizeof(len)) && WriteAll(fd, text.data(), text.size());
  for (const Entry& e : entries_) {
    if (!ok) break;
    ok = WriteAll(fd, e.bytes.data(), e.bytes.size());
  }
  ok = ok && ::fsync(fd) == 0;
  absl::Status status = ok ? absl::OkStatus() : Errno("cannot write", tmp);
  if (::close(fd) != 0 && status.ok()) status = Errno("cannot close", tmp);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = Errno("cannot rename to", path);
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

// ---------------------------------------------------------------------------------------------
// CheckpointReader

absl::StatusOr<CheckpointReader> CheckpointReader::Open(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const std::string single = model_dir + "/model.safetensors";
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  std::error_code ec;
  CheckpointReader reader;

  // Like transformers: a single model.safetensors wins over an index.
  if (fs::exists(single, ec)) {
    KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    for (const auto& [name, view] : file->tensors()) reader.by_name_.emplace(name, &view);
    reader.files_.push_back(std::move(file));
    return reader;
  }
  if (!fs::exists(index_path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("no model.safetensors or model.safetensors.index.json in ", model_dir));
  }

  std::ifstream in(index_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", index_path));
  std::ostringstream text;
  text << in.rdbuf();
  auto bad = [&index_path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", what));
  };
  Json index;
  try {
    index = Json::parse(text.str());
  } catch (const Json::exception& e) {
    return bad(absl::StrCat("malformed JSON: ", e.what()));
  }
  if (!index.is_object()) return bad("not a JSON object");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) return bad("missing or non-object \"weight_map\"");

  std::map<std::string, SafetensorsFile*> opened;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return bad(absl::StrCat("weight_map entry of \"", it.key(), "\" is not a string"));
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return bad(absl::StrCat("weight_map names an invalid shard file \"", shard, "\""));
    }
    SafetensorsFile*& file = opened[shard];
    if (file == nullptr) {
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> opened_file =
          SafetensorsFile::Open(model_dir + "/" + shard);
      if (!opened_file.ok()) {
        if (absl::IsNotFound(opened_file.status())) {
          return bad(
              absl::StrCat("shard \"", shard, "\" (of tensor \"", it.key(), "\") does not exist"));
        }
        return opened_file.status();
      }
      file = opened_file->get();
      reader.files_.push_back(*std::move(opened_file));
    }
    const TensorView* view = file->Find(it.key());
    if (view == nullptr) {
      return bad(absl::StrCat("tensor \"", it.key(), "\" is mapped to shard \"", shard,
                              "\", which lacks it"));
    }
    reader.by_name_.emplace(it.key(), view);
  }
  return reader;
}

absl::StatusOr<const TensorView*> CheckpointReader::Get(absl::string_view name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor \"", name, "\" is not in the checkpoint"));
  }
  return view;
}

const TensorView* CheckpointReader::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::string> CheckpointReader::Names() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, view] : by_name_) names.push_back(name);
  return names;
}

}  // namespace kvtier::engine
