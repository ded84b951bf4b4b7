// Safetensors files (the Hugging Face format: u64 LE header length, a JSON header mapping
// tensor names to dtype, shape and byte offsets, then the data) and model checkpoints made of
// one file or several shards with `model.safetensors.index.json`.
//
// Readers mmap the files read-only; TensorViews point into the mapping and live as long as
// the reader. Readers are move-only and safe for concurrent reads once opened.
#ifndef KVTIER_ENGINE_SAFETENSORS_H_
#define KVTIER_ENGINE_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvtier::engine {

// Element types the engine reads and writes. Other safetensors dtypes are rejected with a
// clear error naming the tensor.
enum class DType { kF32, kF16, kBF16 };

size_t DTypeBytes(DType t);
// "F32", "F16", "BF16" (the safetensors spelling).
const char* DTypeName(DType t);
absl::StatusOr<DType> ParseDType(absl::string_view name);

// bf16/fp16 <-> fp32 conversions (round to nearest even for the narrowing ones).
float Bf16ToFloat(uint16_t v);
uint16_t FloatToBf16(float v);
float F16ToFloat(uint16_t v);
uint16_t FloatToF16(float v);

// Converts `n` elements of `dtype` at `src` to fp32.
void ConvertToFloat(DType dtype, const void* src, size_t n, float* dst);

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the reader's mapping
  size_t nbytes = 0;

  int64_t NumElements() const;
};

// One .safetensors file, mmapped.
class SafetensorsFile {
 public:
  // InvalidArgument (naming the file) for a short file, a header length past the end, bad
  // JSON, unknown dtypes, offsets outside the data or inconsistent with shape * dtype size.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr when absent.
  const TensorView* Find(absl::string_view name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // The "__metadata__" string map of the header.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Builds a safetensors file in memory order of Add() calls and writes it.
// Not thread-safe.
class SafetensorsWriter {
 public:
  // Copies `data` (nbytes must equal product(shape) * DTypeBytes(dtype)).
  absl::Status Add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                   const void* data, size_t nbytes);
  void SetMetadata(const std::string& key, const std::string& value);
  // Writes atomically (temp file + rename).
  absl::Status Write(const std::string& path) const;
  size_t data_bytes() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A model directory's weights: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` ("weight_map": tensor -> file).
class CheckpointReader {
 public:
  // NotFound when neither file exists; InvalidArgument for a malformed index or shard, or a
  // tensor the index maps to a shard that lacks it.
  static absl::StatusOr<CheckpointReader> Open(const std::string& model_dir);

  // NotFound naming the tensor when absent.
  absl::StatusOr<const TensorView*> Get(absl::string_view name) const;
  const TensorView* Find(absl::string_view name) const;
  // Every tensor name, sorted.
  std::vector<std::string> Names() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> by_name_;
};

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_SAFETENSORS_H_
