// Tests of common/safetensors.h (header parsing, mmap file) and common/safetensors_writer.h.
#include "common/safetensors.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/safetensors_writer.h"
#include "gtest/gtest.h"

namespace ultramem {
namespace {

constexpr char kFile[] = "weights.safetensors";

// A file image: 8-byte little-endian length, the header text, then `data`.
std::string Image(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

absl::StatusOr<SafetensorsHeader> Parse(const std::string& image) {
  return ParseSafetensorsHeader(image, image.size(), kFile);
}

// Asserts an InvalidArgument whose message names the file and every one of `parts`.
void ExpectInvalid(const absl::Status& status, const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  const std::string message(status.message());
  EXPECT_NE(message.find(kFile), std::string::npos) << message;
  for (const std::string& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: " << message;
  }
}

TEST(SafetensorsHeaderTest, ParsesTensorsAndMetadata) {
  const std::string header =
      R"({"__metadata__": {"format": "pt"},
          "b": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [16, 28]},
          "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
          "s": {"dtype": "I64", "shape": [], "data_offsets": [28, 36]},
          "e": {"dtype": "F16", "shape": [0, 5], "data_offsets": [36, 36]}})";
  absl::StatusOr<SafetensorsHeader> h = Parse(Image(header, std::string(36, 'x')));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->data_start, 8 + header.size());
  EXPECT_EQ(h->metadata.at("format"), "pt");
  ASSERT_EQ(h->tensors.size(), 4u);
  const TensorEntry& b = h->tensors.at("b");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(b.begin, 16u);
  EXPECT_EQ(b.end, 28u);
  EXPECT_EQ(b.NumElements(), 6);
  EXPECT_EQ(h->tensors.at("s").NumElements(), 1);
  EXPECT_EQ(h->tensors.at("e").NumElements(), 0);
}

TEST(SafetensorsHeaderTest, AcceptsJustTheHeaderBytes) {
  const std::string image =
      Image(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", std::string(16, 0));
  const uint64_t header_end = image.size() - 16;
  absl::StatusOr<SafetensorsHeader> h =
      ParseSafetensorsHeader(std::string_view(image).substr(0, header_end), image.size(), kFile);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors.at("a").end, 16u);
}

TEST(SafetensorsHeaderTest, RefusesShortFile) {
  ExpectInvalid(Parse("").status(), {"too short"});
  ExpectInvalid(Parse("1234567").status(), {"too short"});
}

TEST(SafetensorsHeaderTest, RefusesHeaderLengthPastEnd) {
  std::string image = Image("{}");
  const uint64_t huge = 1000;
  std::memcpy(image.data(), &huge, 8);
  ExpectInvalid(Parse(image).status(), {"header length 1000"});
  const uint64_t max = ~uint64_t{0};
  std::memcpy(image.data(), &max, 8);
  ExpectInvalid(Parse(image).status(), {"past the end"});
}

TEST(SafetensorsHeaderTest, RefusesBadJson) {
  ExpectInvalid(Parse(Image(R"({"a": {"dtype": )")).status(), {"not valid JSON"});
  ExpectInvalid(Parse(Image(R"({"a": 1} trailing)")).status(), {"not valid JSON"});
  ExpectInvalid(Parse(Image("\xff\xfe")).status(), {"not valid JSON"});
  ExpectInvalid(Parse(Image("[1, 2]")).status(), {"not an object"});
}

TEST(SafetensorsHeaderTest, RefusesMalformedEntries) {
  struct Case {
    std::string entry;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {R"("t": 5)", "not a JSON object"},
      {R"("t": {"shape": [1], "data_offsets": [0, 4]})", "dtype"},
      {R"("t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]})", "unsupported dtype"},
      {R"("t": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]})", "dtype"},
      {R"("t": {"dtype": "F32", "data_offsets": [0, 4]})", "shape"},
      {R"("t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})", "non-negative integer"},
      {R"("t": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]})", "non-negative integer"},
      {R"("t": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]})", "non-negative integer"},
      {R"("t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]})",
       "overflows"},
      {R"("t": {"dtype": "F32", "shape": [1]})", "data_offsets"},
      {R"("t": {"dtype": "F32", "shape": [1], "data_offsets": [0]})", "data_offsets"},
      {R"("t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]})", "data_offsets"},
      {R"("t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]})", "data_offsets"},
      {R"("t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]})", "reversed"},
      {R"("t": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]})", "outside the file"},
      {R"("t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]})", "needs 8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.entry);
    ExpectInvalid(Parse(Image("{" + c.entry + "}", std::string(16, 0))).status(),
                  {"\"t\"", c.expect});
  }
}

TEST(SafetensorsHeaderTest, RefusesOverlappingTensors) {
  const std::string header =
      R"({"first": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "second": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  ExpectInvalid(Parse(Image(header, std::string(12, 0))).status(), {"second", "first", "overlaps"});
}

TEST(SafetensorsHeaderTest, RefusesNonStringMetadata) {
  ExpectInvalid(Parse(Image(R"({"__metadata__": {"k": 1}})")).status(), {"__metadata__", "\"k\""});
  ExpectInvalid(Parse(Image(R"({"__metadata__": []})")).status(), {"__metadata__"});
}

// Filesystem tests: a fresh temporary directory per test.
class SafetensorsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/safetensors_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(SafetensorsFileTest, WriterRoundTrip) {
  const std::string path = dir_ + "/" + kFile;
  const std::vector<float> f = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  std::vector<TensorToWrite> tensors = {
      {"f32", DType::kF32, {2, 3}, F32Bytes(f)},
      {"bf16", DType::kBF16, {3}, Bf16Bytes({1.0f, -0.5f, 3.0f})},
      {"f16", DType::kF16, {1, 2}, F16Bytes({0.25f, -65504.0f})},
      {"i32", DType::kI32, {2}, I32Bytes({7, -3})},
      {"i64", DType::kI64, {1}, I64Bytes({int64_t{1} << 40})},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(getpid())));

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().metadata.at("format"), "pt");
  EXPECT_EQ((*file)->header().data_start % 8, 0u);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  for (const TensorToWrite& t : tensors) {
    const TensorEntry* e = (*file)->Find(t.name);
    ASSERT_NE(e, nullptr) << t.name;
    EXPECT_EQ(e->dtype, t.dtype);
    EXPECT_EQ(e->shape, t.shape);
    const TensorView view = (*file)->View(*e);
    EXPECT_EQ(view.file, path);
    ASSERT_EQ(view.NumBytes(), t.bytes.size());
    EXPECT_EQ(std::memcmp(view.data, t.bytes.data(), t.bytes.size()), 0) << t.name;
  }
  std::vector<float> got(6);
  const TensorView view = (*file)->View(*(*file)->Find("f32"));
  ConvertToF32(DType::kF32, view.data, 6, got.data());
  EXPECT_EQ(got, f);
}

TEST_F(SafetensorsFileTest, WriterRefusesBadTensors) {
  const std::string path = dir_ + "/" + kFile;
  EXPECT_EQ(WriteSafetensors(path, {{"t", DType::kF32, {2}, "abc"}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"t", DType::kF32, {1}, F32Bytes({1})},
                                    {"t", DType::kF32, {1}, F32Bytes({1})}})
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(SafetensorsFileTest, OpenMissingIsNotFound) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir_ + "/nope");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(file.status().message()).find("nope"), std::string::npos);
}

TEST_F(SafetensorsFileTest, OpenEmptyAndDirectoryAreInvalid) {
  const std::string path = dir_ + "/" + kFile;
  std::ofstream(path).close();
  ExpectInvalid(SafetensorsFile::Open(path).status(), {"too short"});
  EXPECT_EQ(SafetensorsFile::Open(dir_).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsFileTest, OpenTruncatedNamesTensor) {
  const std::string path = dir_ + "/" + kFile;
  ASSERT_TRUE(WriteSafetensors(path, {{"head", DType::kF32, {2}, F32Bytes({1, 2})},
                                      {"tail", DType::kF32, {4}, F32Bytes({1, 2, 3, 4})}})
                  .ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 3);
  ExpectInvalid(SafetensorsFile::Open(path).status(), {"\"tail\"", "outside the file"});
}

}  // namespace
}  // namespace ultramem
