#include "engine/safetensors.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::engine {
namespace {

using ::kvtier::testing::ReadFile;
using ::kvtier::testing::TempDirTest;
using ::kvtier::testing::WriteFile;
using ::testing::HasSubstr;

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A safetensors file from a header text and data bytes; `header_len` overrides the length.
std::string MakeFile(const std::string& header, const std::string& data,
                     uint64_t header_len = UINT64_MAX) {
  if (header_len == UINT64_MAX) header_len = header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(header_len >> (8 * i));
  return out + header + data;
}

// --- dtypes and conversions ------------------------------------------------------------------

TEST(SafetensorsDTypeTest, NamesAndSizes) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    absl::StatusOr<DType> back = ParseDType(DTypeName(t));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, t);
  }
  EXPECT_EQ(DTypeBytes(DType::kF32), 4u);
  EXPECT_EQ(DTypeBytes(DType::kF16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2u);
  for (const char* other : {"F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "bf16", ""}) {
    absl::StatusOr<DType> t = ParseDType(other);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << other;
  }
}

TEST(SafetensorsDTypeTest, Bf16Rounding) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  // Exactly halfway: ties to even.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000)), 0x3f80);  // 1 + 2^-8 -> 1 (even)
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000)), 0x3f82);  // odd below -> up to even
  // Above / below halfway.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f807fff)), 0x3f80);
  // Carries into the exponent, and overflow to infinity.
  EXPECT_EQ(FloatToBf16(FromBits(0x3fffffff)), 0x4000);
  EXPECT_EQ(FloatToBf16(FromBits(0x7f7fffff)), 0x7f80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // Subnormals round like everything else.
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000)), 0x0000);
  EXPECT_EQ(FloatToBf16(FromBits(0x00018000)), 0x0002);
  // NaNs stay NaN, even those whose payload lives only in the dropped bits, sign kept.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const uint16_t b = FloatToBf16(FromBits(nan));
    EXPECT_TRUE(std::isnan(Bf16ToFloat(b))) << std::hex << nan;
    EXPECT_EQ(b >> 15, nan >> 31);
  }
  // Widening is exact, and narrowing a widened value is the identity.
  for (uint32_t v = 0; v < 0x10000; ++v) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(v));
    EXPECT_EQ(Bits(f), v << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(FloatToBf16(f), v);
    }
  }
}

// Reference half -> float: by the definition of the format.
float F16Reference(uint16_t h) {
  const int sign = h >> 15;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant == 0 ? std::numeric_limits<float>::infinity() : std::nanf("");
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  }
  return sign ? -v : v;
}

TEST(SafetensorsDTypeTest, F16Exhaustive) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    const float ref = F16Reference(static_cast<uint16_t>(h));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_TRUE(std::isnan(F16ToFloat(FloatToF16(f)))) << h;
      continue;
    }
    ASSERT_EQ(Bits(f), Bits(ref)) << h;
    ASSERT_EQ(FloatToF16(f), h) << h;
  }
}

TEST(SafetensorsDTypeTest, F16Rounding) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);  // below halfway
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // halfway: to even = inf
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -24)), 0x0001);             // smallest subnormal
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);             // tie -> even (zero)
  EXPECT_EQ(FloatToF16(std::ldexp(1.5f, -24)), 0x0002);             // tie -> even (up)
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
}

TEST(SafetensorsDTypeTest, ConvertToFloat) {
  const std::vector<float> values = {0.0f, 1.0f, -2.5f, 3.140625f, 1e-3f, -65504.0f, 0.5f};
  std::vector<uint16_t> bf16, f16;
  for (float v : values) {
    bf16.push_back(FloatToBf16(v));
    f16.push_back(FloatToF16(v));
  }
  std::vector<float> out(values.size());
  ConvertToFloat(DType::kF32, values.data(), values.size(), out.data());
  EXPECT_EQ(out, values);
  ConvertToFloat(DType::kBF16, bf16.data(), bf16.size(), out.data());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(out[i], Bf16ToFloat(bf16[i]));
  ConvertToFloat(DType::kF16, f16.data(), f16.size(), out.data());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(out[i], F16ToFloat(f16[i]));
  // Unaligned sources are fine.
  std::vector<uint8_t> unaligned(1 + 2 * bf16.size());
  std::memcpy(unaligned.data() + 1, bf16.data(), 2 * bf16.size());
  ConvertToFloat(DType::kBF16, unaligned.data() + 1, bf16.size(), out.data());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(out[i], Bf16ToFloat(bf16[i]));
}

// --- files -----------------------------------------------------------------------------------

class SafetensorsFileTest : public TempDirTest {};

TEST_F(SafetensorsFileTest, WriteReadRoundTrip) {
  std::vector<float> f32(2 * 3);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = 0.25f * static_cast<float>(i) - 1.0f;
  std::vector<uint16_t> f16 = {FloatToF16(1.5f), FloatToF16(-3.0f), FloatToF16(0.1f)};
  std::vector<uint16_t> bf16(5 * 1 * 2);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = FloatToBf16(static_cast<float>(i) / 7);
  const float scalar = 42.0f;

  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("a.f32", DType::kF32, {2, 3}, f32.data(), f32.size() * 4).ok());
  ASSERT_TRUE(w.Add("b.f16", DType::kF16, {3}, f16.data(), f16.size() * 2).ok());
  ASSERT_TRUE(w.Add("c.bf16", DType::kBF16, {5, 1, 2}, bf16.data(), bf16.size() * 2).ok());
  ASSERT_TRUE(w.Add("d.scalar", DType::kF32, {}, &scalar, 4).ok());
  ASSERT_TRUE(w.Add("e.empty", DType::kBF16, {2, 0}, nullptr, 0).ok());
  w.SetMetadata("format", "pt");
  w.SetMetadata("note", "hello");
  EXPECT_EQ(w.data_bytes(), f32.size() * 4 + f16.size() * 2 + bf16.size() * 2 + 4);
  ASSERT_TRUE(w.Write(Path("m.safetensors")).ok());

  // No temp file left behind; the header is padded to 8 bytes.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
  const std::string raw = ReadFile(Path("m.safetensors"));
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t{static_cast<uint8_t>(raw[i])} << (8 * i);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(raw[8], '{');

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Path("m.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hello");

  const TensorView* a = f.Find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->name, "a.f32");
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->NumElements(), 6);
  ASSERT_EQ(a->nbytes, f32.size() * 4);
  EXPECT_EQ(std::memcmp(a->data, f32.data(), a->nbytes), 0);

  const TensorView* b = f.Find("b.f16");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kF16);
  std::vector<float> out(3);
  ConvertToFloat(b->dtype, b->data, 3, out.data());
  EXPECT_EQ(out, (std::vector<float>{1.5f, -3.0f, F16ToFloat(FloatToF16(0.1f))}));

  const TensorView* c = f.Find("c.bf16");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->shape, (std::vector<int64_t>{5, 1, 2}));
  EXPECT_EQ(std::memcmp(c->data, bf16.data(), c->nbytes), 0);

  const TensorView* d = f.Find("d.scalar");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->shape.empty());
  EXPECT_EQ(d->NumElements(), 1);
  float got;
  std::memcpy(&got, d->data, 4);
  EXPECT_EQ(got, 42.0f);

  const TensorView* e = f.Find("e.empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->nbytes, 0u);
  EXPECT_EQ(e->NumElements(), 0);

  EXPECT_EQ(f.Find("missing"), nullptr);

  // Overwriting is atomic (rename) and leaves the old mapping valid.
  SafetensorsWriter w2;
  ASSERT_TRUE(w2.Add("only", DType::kF32, {1}, &scalar, 4).ok());
  ASSERT_TRUE(w2.Write(Path("m.safetensors")).ok());
  EXPECT_EQ(std::memcmp(a->data, f32.data(), a->nbytes), 0);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> again =
      SafetensorsFile::Open(Path("m.safetensors"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->tensors().size(), 1u);
}

TEST_F(SafetensorsFileTest, WriterRejectsBadInput) {
  const float v[4] = {1, 2, 3, 4};
  SafetensorsWriter w;
  EXPECT_EQ(w.Add("x", DType::kF32, {2, 2}, v, 12).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Add("x", DType::kF32, {-1}, v, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Add("", DType::kF32, {1}, v, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Add("__metadata__", DType::kF32, {1}, v, 4).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(w.Add("x", DType::kF32, {2, 2}, v, 16).ok());
  EXPECT_FALSE(w.Add("x", DType::kF32, {2, 2}, v, 16).ok());
  EXPECT_FALSE(w.Write(Path("no/such/dir/m.safetensors")).ok());
}

TEST_F(SafetensorsFileTest, ReadsHandWrittenFile) {
  // As the Python library writes it: compact JSON, sorted keys, space padding.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})";
  std::string padded = header;
  padded.append((8 - padded.size() % 8) % 8, ' ');
  const uint16_t data[2] = {FloatToF16(1.0f), FloatToF16(-1.0f)};
  WriteFile(Path("h.safetensors"),
            MakeFile(padded, std::string(reinterpret_cast<const char*>(data), 4)));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(Path("h.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorView* w = (*f)->Find("w");
  ASSERT_NE(w, nullptr);
  float out[2];
  ConvertToFloat(w->dtype, w->data, 2, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -1.0f);
}

TEST_F(SafetensorsFileTest, MalformedFilesAreInvalidArgument) {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8(8, '\x01');
  struct Case {
    const char* what;
    std::string bytes;
    const char* message;  // expected substring
  };
  const std::vector<Case> cases = {
      {"empty", "", "too short"},
      {"7 bytes", std::string(7, '\0'), "too short"},
      {"header length past end", MakeFile("{" + ok_entry + "}", data8, 1000), "past the end"},
      {"header length huge", MakeFile("{}", "", UINT64_MAX - 3), "past the end"},
      {"bad JSON", MakeFile("{\"t\": [", data8), "malformed header JSON"},
      {"not an object", MakeFile("[1,2,3]", data8), "not a JSON object"},
      {"entry not an object", MakeFile(R"({"t": 5})", data8), "\"t\""},
      {"offsets past data",
       MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", data8),
       "outside the data"},
      {"offsets reversed",
       MakeFile(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data8),
       "outside the data"},
      {"offsets/shape mismatch",
       MakeFile(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8), "shape [3]"},
      {"dtype size mismatch",
       MakeFile(R"({"t":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", data8), "needs 4"},
      {"shape overflow",
       MakeFile(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                data8),
       "\"t\""},
      {"unknown dtype",
       MakeFile(R"({"t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", data8),
       "tensor \"t\": unsupported dtype \"I64\""},
      {"missing offsets", MakeFile(R"({"t":{"dtype":"F32","shape":[2]}})", data8), "data_offsets"},
      {"negative offset",
       MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", data8),
       "data_offsets"},
      {"negative dim",
       MakeFile(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8), "shape"},
      {"string dtype missing", MakeFile(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", data8),
       "dtype"},
      {"metadata not strings", MakeFile(R"({"__metadata__":{"a":1}})", ""), "__metadata__"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    WriteFile(Path("bad.safetensors"), c.bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
        SafetensorsFile::Open(Path("bad.safetensors"));
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.message));
    EXPECT_THAT(std::string(f.status().message()), HasSubstr("bad.safetensors"));
  }
  EXPECT_EQ(SafetensorsFile::Open(Path("absent.safetensors")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsFileTest, TruncatedAndCorruptedFilesNeverCrash) {
  std::vector<float> v(16, 1.0f);
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("a", DType::kF32, {4, 4}, v.data(), 64).ok());
  ASSERT_TRUE(w.Add("b", DType::kBF16, {8}, v.data(), 16).ok());
  ASSERT_TRUE(w.Write(Path("good.safetensors")).ok());
  const std::string good = ReadFile(Path("good.safetensors"));

  // Every proper prefix is refused.
  for (size_t len = 0; len < good.size(); ++len) {
    WriteFile(Path("t.safetensors"), good.substr(0, len));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
        SafetensorsFile::Open(Path("t.safetensors"));
    ASSERT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << len;
  }
  // Random byte flips: any status, but no crash, and a successful open only yields tensors
  // that lie inside the file.
  std::mt19937 rng(7);
  for (int iter = 0; iter < 500; ++iter) {
    std::string bad = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      bad[rng() % bad.size()] = static_cast<char>(rng());
    }
    WriteFile(Path("c.safetensors"), bad);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
        SafetensorsFile::Open(Path("c.safetensors"));
    if (!f.ok()) continue;
    for (const auto& [name, t] : (*f)->tensors()) {
      uint64_t sum = 0;
      for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];  // touches every byte (ASan)
      (void)sum;
    }
  }
}

// --- checkpoints -----------------------------------------------------------------------------

class CheckpointTest : public TempDirTest {
 protected:
  // Tensors x0..x5 of different shapes and dtypes.
  void AddTensors(SafetensorsWriter& w, int first, int last) {
    for (int i = first; i < last; ++i) {
      std::vector<uint16_t> d(static_cast<size_t>(i + 1) * 3);
      for (size_t k = 0; k < d.size(); ++k) d[k] = FloatToBf16(static_cast<float>(i * 100 + k));
      ASSERT_TRUE(
          w.Add(absl::StrCat("x", i), DType::kBF16, {i + 1, 3}, d.data(), d.size() * 2).ok());
    }
  }
  void WriteSharded() {
    SafetensorsWriter a, b;
    AddTensors(a, 0, 3);
    AddTensors(b, 3, 6);
    ASSERT_TRUE(a.Write(Path("model-00001-of-00002.safetensors")).ok());
    ASSERT_TRUE(b.Write(Path("model-00002-of-00002.safetensors")).ok());
    std::string map;
    for (int i = 0; i < 6; ++i) {
      absl::StrAppend(&map, i ? "," : "", "\"x", i, "\": \"model-0000", i < 3 ? 1 : 2,
                      "-of-00002.safetensors\"");
    }
    WriteFile(Path("model.safetensors.index.json"),
              absl::StrCat(R"({"metadata": {"total_size": 126}, "weight_map": {)", map, "}}"));
  }
};

TEST_F(CheckpointTest, ShardedAndSingleReadTheSame) {
  const std::string single_dir = Path("single");
  std::filesystem::create_directories(single_dir);
  SafetensorsWriter all;
  AddTensors(all, 0, 6);
  ASSERT_TRUE(all.Write(single_dir + "/model.safetensors").ok());
  WriteSharded();

  absl::StatusOr<CheckpointReader> single = CheckpointReader::Open(single_dir);
  ASSERT_TRUE(single.ok()) << single.status();
  absl::StatusOr<CheckpointReader> sharded = CheckpointReader::Open(dir_);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_EQ(single->Names(), sharded->Names());
  EXPECT_EQ(single->Names(), (std::vector<std::string>{"x0", "x1", "x2", "x3", "x4", "x5"}));
  for (const std::string& name : single->Names()) {
    absl::StatusOr<const TensorView*> a = single->Get(name);
    absl::StatusOr<const TensorView*> b = sharded->Get(name);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((*a)->shape, (*b)->shape);
    EXPECT_EQ((*a)->dtype, (*b)->dtype);
    ASSERT_EQ((*a)->nbytes, (*b)->nbytes);
    EXPECT_EQ(std::memcmp((*a)->data, (*b)->data, (*a)->nbytes), 0) << name;
  }
  absl::StatusOr<const TensorView*> missing = sharded->Get("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope"));
  EXPECT_EQ(sharded->Find("nope"), nullptr);

  // Readers move without invalidating views.
  const TensorView* before = sharded->Find("x4");
  CheckpointReader moved = *std::move(sharded);
  EXPECT_EQ(moved.Find("x4"), before);
}

TEST_F(CheckpointTest, Errors) {
  EXPECT_EQ(CheckpointReader::Open(dir_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CheckpointReader::Open(Path("nonexistent")).status().code(),
            absl::StatusCode::kNotFound);

  WriteFile(Path("model.safetensors.index.json"), "{ nope");
  EXPECT_EQ(CheckpointReader::Open(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile(Path("model.safetensors.index.json"), R"({"metadata": {}})");
  EXPECT_EQ(CheckpointReader::Open(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile(Path("model.safetensors.index.json"), R"({"weight_map": {"x0": 3}})");
  EXPECT_EQ(CheckpointReader::Open(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile(Path("model.safetensors.index.json"), R"({"weight_map": {"x0": "../etc/passwd"}})");
  EXPECT_EQ(CheckpointReader::Open(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile(Path("model.safetensors.index.json"),
            R"({"weight_map": {"x0": "absent.safetensors"}})");
  absl::StatusOr<CheckpointReader> r = CheckpointReader::Open(dir_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("absent.safetensors"));

  // A tensor mapped to a shard that lacks it.
  WriteSharded();
  WriteFile(Path("model.safetensors.index.json"),
            R"({"weight_map": {"x0": "model-00002-of-00002.safetensors"}})");
  r = CheckpointReader::Open(dir_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("\"x0\""));

  // A malformed shard.
  WriteSharded();
  WriteFile(Path("model-00002-of-00002.safetensors"), "garbage!garbage!");
  r = CheckpointReader::Open(dir_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model-00002-of-00002"));

  // A single file wins over an index.
  SafetensorsWriter one;
  AddTensors(one, 0, 1);
  ASSERT_TRUE(one.Write(Path("model.safetensors")).ok());
  r = CheckpointReader::Open(dir_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Names(), std::vector<std::string>{"x0"});
}

}  // namespace
}  // namespace kvtier::engine
