// Tests of common/checkpoint.h over small model directories built with common/checkpoint_writer.h:
// the good paths (single and split files, every dtype) and one test per malformed class.
#include "common/checkpoint.h"

#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "common/checkpoint_writer.h"
#include "common/testing/test_model_config.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ultramem {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// V=260 D=16 L=3, GQA 2/1 heads of 8, F=24; two memory layers with knum=4 (N=16), E=4 (n=8,
// E·N=64), Dk=8, Dv=8, H=2, m=3, r=2, h=2.
ModelConfig SmallConfig() {
  return testing::TestModelConfig({.vocab_size = 260,
                                   .hidden_size = 16,
                                   .num_layers = 3,
                                   .heads = 2,
                                   .kv_heads = 1,
                                   .head_dim = 8,
                                   .intermediate_size = 24,
                                   .memory_layers = {{0, 1}, {1, 2}},
                                   .knum = 4,
                                   .key_dim = 8,
                                   .value_dim = 8,
                                   .topk = 3});
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Rewrites the JSON header of a safetensors file through `edit`, keeping the data section.
void EditHeader(const std::string& path, const std::function<void(Json&)>& edit) {
  const std::string image = ReadAll(path);
  uint64_t n;
  std::memcpy(&n, image.data(), 8);
  Json header = Json::parse(image.substr(8, n));
  edit(header);
  const std::string text = header.dump();
  std::string out(8, '\0');
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  WriteAll(path, out + text + image.substr(8 + n));
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/checkpoint_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& file) const { return dir_ + "/" + file; }

  // Writes SmallConfig-like `config` with random tensors, after `mutate` has had its way with them.
  void Write(const ModelConfig& config, const RandomCheckpointOptions& options = {},
             const std::function<void(std::vector<TensorToWrite>&)>& mutate = nullptr) {
    std::vector<TensorToWrite> tensors = MakeRandomTensors(config, options);
    if (mutate) mutate(tensors);
    ASSERT_TRUE(WriteCheckpoint(dir_, config, tensors, options.split_files).ok());
  }

  static TensorToWrite& Find(std::vector<TensorToWrite>& tensors, const std::string& name) {
    auto it = std::find_if(tensors.begin(), tensors.end(),
                           [&](const TensorToWrite& t) { return t.name == name; });
    EXPECT_NE(it, tensors.end()) << name;
    return *it;
  }

  absl::StatusOr<std::unique_ptr<Checkpoint>> Open() { return Checkpoint::Open(dir_); }

  // Asserts an InvalidArgument (unless `code` says otherwise) naming `file` and `tensor`.
  void ExpectRefused(const std::string& file, const std::string& tensor,
                     const std::string& also = "",
                     absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
    ASSERT_FALSE(ckpt.ok()) << "opened a malformed checkpoint";
    EXPECT_EQ(ckpt.status().code(), code) << ckpt.status();
    const std::string message(ckpt.status().message());
    RecordProperty("message", message);  // visible with --gtest_output=xml
    EXPECT_NE(message.find(Path(file)), std::string::npos) << "no file " << file << ": " << message;
    if (!tensor.empty()) {
      EXPECT_NE(message.find("\"" + tensor + "\""), std::string::npos)
          << "no tensor " << tensor << ": " << message;
    }
    if (!also.empty()) {
      EXPECT_NE(message.find(also), std::string::npos) << message;
    }
  }

  std::string dir_;
};

// ---- Good paths ----

TEST_F(CheckpointTest, OpensSingleFileAndReadsF32Exactly) {
  Write(SmallConfig());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const Checkpoint& c = **ckpt;
  EXPECT_EQ(c.dir(), dir_);
  EXPECT_EQ(c.config().NumMemoryLayers(), 2);
  const std::vector<TensorToWrite> want = MakeRandomTensors(SmallConfig());
  for (const TensorToWrite& t : want) {
    if (t.dtype != DType::kF32) continue;
    absl::StatusOr<std::vector<float>> got = c.ReadF32(t.name);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size() * 4, t.bytes.size());
    EXPECT_EQ(std::memcmp(got->data(), t.bytes.data(), t.bytes.size()), 0) << t.name;
  }
  absl::StatusOr<TensorView> view = c.Get("memory.1.values");
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->entry->shape, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(view->file, Path("model.safetensors"));
}

TEST_F(CheckpointTest, OpensSplitFilesWithIndex) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  ASSERT_TRUE(fs::exists(Path("model.safetensors.index.json")));
  ASSERT_TRUE(fs::exists(Path("model-values-1.safetensors")));
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Get("memory.1.values")->file, Path("model-values-1.safetensors"));
  EXPECT_EQ((*ckpt)->Get("memory.1.keys")->file, Path("model-dense.safetensors"));
  absl::StatusOr<std::vector<float>> v = (*ckpt)->ReadF32("memory.0.values");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->size(), 16u * 8);
}

TEST_F(CheckpointTest, Bf16AndF16RoundTripValues) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    RandomCheckpointOptions options;
    options.float_dtype = dtype;
    options.scale = 3.0f;
    Write(SmallConfig(), options);
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ((*ckpt)->Get("embed_tokens.weight")->entry->dtype, dtype);
    // Same stream of random floats as an F32 checkpoint, rounded once.
    RandomCheckpointOptions f32 = options;
    f32.float_dtype = DType::kF32;
    for (const TensorToWrite& t : MakeRandomTensors(SmallConfig(), f32)) {
      if (t.dtype != DType::kF32) continue;
      std::vector<float> exact(t.bytes.size() / 4);
      std::memcpy(exact.data(), t.bytes.data(), t.bytes.size());
      absl::StatusOr<std::vector<float>> got = (*ckpt)->ReadF32(t.name);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), exact.size());
      for (size_t i = 0; i < exact.size(); ++i) {
        const float want = dtype == DType::kBF16 ? Bf16ToF32(F32ToBf16(exact[i]))
                                                 : F16ToF32(F32ToF16(exact[i]));
        ASSERT_EQ((*got)[i], want) << t.name << "[" << i << "]";
        ASSERT_NEAR((*got)[i], exact[i], 3.0f / 128) << t.name << "[" << i << "]";
      }
    }
    fs::remove_all(dir_);
  }
}

TEST_F(CheckpointTest, ReadF32BlockMatchesReadF32) {
  RandomCheckpointOptions options;
  options.float_dtype = DType::kBF16;
  Write(SmallConfig(), options);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::vector<float> all = *(*ckpt)->ReadF32("memory.0.values");  // [16, 8]
  std::vector<float> block(5 * 3);
  ASSERT_TRUE((*ckpt)->ReadF32Block("memory.0.values", 2, 7, 4, 7, block.data()).ok());
  for (int r = 0; r < 5; ++r) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(block[r * 3 + c], all[(2 + r) * 8 + 4 + c]);
  }
  std::vector<float> rows(3 * 8);
  ASSERT_TRUE((*ckpt)->ReadF32Block("memory.0.values", 13, 16, 0, 8, rows.data()).ok());
  EXPECT_TRUE(std::equal(rows.begin(), rows.end(), all.begin() + 13 * 8));
  EXPECT_TRUE((*ckpt)->ReadF32Block("memory.0.values", 4, 4, 0, 8, nullptr).ok());

  EXPECT_EQ((*ckpt)->ReadF32Block("memory.0.values", 0, 17, 0, 8, rows.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*ckpt)->ReadF32Block("memory.0.values", 0, 1, 5, 9, rows.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*ckpt)->ReadF32Block("memory.0.keys", 0, 1, 0, 1, rows.data()).code(),
            absl::StatusCode::kInvalidArgument);  // 5-D
  EXPECT_EQ((*ckpt)->ReadF32Block("memory.0.shuffle_index", 0, 1, 0, 1, rows.data()).code(),
            absl::StatusCode::kInvalidArgument);  // not float
}

TEST_F(CheckpointTest, ShuffleIndexI32AndI64) {
  for (DType dtype : {DType::kI32, DType::kI64}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    RandomCheckpointOptions options;
    options.shuffle_dtype = dtype;
    Write(SmallConfig(), options);
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    absl::StatusOr<std::vector<int64_t>> idx = (*ckpt)->ReadI64("memory.1.shuffle_index");
    ASSERT_TRUE(idx.ok()) << idx.status();
    ASSERT_EQ(idx->size(), 64u);
    std::vector<int64_t> sorted = *idx;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(sorted[i], i);
    EXPECT_NE(*idx, sorted) << "not shuffled";
    EXPECT_EQ((*ckpt)->ReadI64("memory.1.values").status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*ckpt)->ReadF32("memory.1.shuffle_index").status().code(),
              absl::StatusCode::kInvalidArgument);
    fs::remove_all(dir_);
  }
}

TEST_F(CheckpointTest, TiedEmbeddingsWithoutLmHead) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  Write(config);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->config().tie_word_embeddings);
  EXPECT_EQ((*ckpt)->Get("lm_head.weight").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, DenseModelWithoutMemory) {
  ModelConfig config = SmallConfig();
  config.memory.reset();
  Write(config);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_FALSE((*ckpt)->config().memory.has_value());
  EXPECT_TRUE((*ckpt)->Get("lm_head.weight").ok());
}

TEST_F(CheckpointTest, GetUnknownIsNotFoundNamingDir) {
  Write(SmallConfig());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok());
  absl::Status s = (*ckpt)->Get("nope").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(s.message()).find(dir_), std::string::npos);
  EXPECT_NE(std::string(s.message()).find("nope"), std::string::npos);
}

TEST_F(CheckpointTest, MissingDirOrConfigIsNotFound) {
  EXPECT_EQ(Checkpoint::Open(dir_ + "/absent").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kNotFound);  // empty dir: no config.json
}

// ---- Malformed checkpoints: one test per class ----

TEST_F(CheckpointTest, RefusesMissingTensor) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    t.erase(std::remove_if(t.begin(), t.end(),
                           [](const TensorToWrite& x) { return x.name == "layers.1.ffn.up_proj.weight"; }),
            t.end());
  });
  ExpectRefused("model.safetensors", "layers.1.ffn.up_proj.weight", "missing");
}

TEST_F(CheckpointTest, RefusesExtraTensor) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    t.push_back({"layers.9.attn_norm.weight", DType::kF32, {16}, F32Bytes(std::vector<float>(16))});
  });
  ExpectRefused("model.safetensors", "layers.9.attn_norm.weight", "not part of this model");
}

TEST_F(CheckpointTest, RefusesLmHeadWhenTied) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  Write(config, {}, [](std::vector<TensorToWrite>& t) {
    t.push_back({"lm_head.weight", DType::kF32, {260, 16}, F32Bytes(std::vector<float>(260 * 16))});
  });
  ExpectRefused("model.safetensors", "lm_head.weight", "not part of this model");
}

TEST_F(CheckpointTest, RefusesWrongShape) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    TensorToWrite& keys = Find(t, "memory.0.keys");
    keys.shape = {2, 2, 4, 8, 4};  // same element count, wrong layout
  });
  ExpectRefused("model.safetensors", "memory.0.keys", "[2, 2, 8, 8, 2]");
}

TEST_F(CheckpointTest, RefusesWrongFloatDtype) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    TensorToWrite& w = Find(t, "layers.2.attn.o_proj.weight");
    w.dtype = DType::kI32;  // same byte size as F32
  });
  ExpectRefused("model.safetensors", "layers.2.attn.o_proj.weight", "I32");
}

TEST_F(CheckpointTest, RefusesWrongShuffleIndexDtype) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    TensorToWrite& s = Find(t, "memory.1.shuffle_index");
    s.dtype = DType::kF32;
    s.bytes = F32Bytes(std::vector<float>(64));
  });
  ExpectRefused("model.safetensors", "memory.1.shuffle_index", "I32 or I64");
}

TEST_F(CheckpointTest, RefusesHeaderPointingOutsideFile) {
  Write(SmallConfig());
  EditHeader(Path("model.safetensors"), [](Json& h) {
    Json& offsets = h["final_norm.weight"]["data_offsets"];
    offsets[0] = offsets[0].get<uint64_t>() + (1u << 20);
    offsets[1] = offsets[1].get<uint64_t>() + (1u << 20);
  });
  ExpectRefused("model.safetensors", "final_norm.weight", "outside the file");
}

TEST_F(CheckpointTest, RefusesTruncatedFile) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  const std::string path = Path("model-values-0.safetensors");  // holds one tensor
  fs::resize_file(path, fs::file_size(path) - 5);
  ExpectRefused("model-values-0.safetensors", "memory.0.values", "outside the file");
}

TEST_F(CheckpointTest, RefusesBadJsonHeader) {
  Write(SmallConfig());
  const std::string path = Path("model.safetensors");
  std::string image = ReadAll(path);
  image[8] = '[';  // `["__metadata__": ...`: no longer JSON, same length
  WriteAll(path, image);
  ExpectRefused("model.safetensors", "", "not valid JSON");
}

TEST_F(CheckpointTest, RefusesShuffleIndexWithDuplicate) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    std::vector<int64_t> perm(64);
    for (int64_t i = 0; i < 64; ++i) perm[i] = i;
    perm[40] = 7;  // 7 twice, 40 never
    Find(t, "memory.0.shuffle_index").bytes = I64Bytes(perm);
  });
  ExpectRefused("model.safetensors", "memory.0.shuffle_index", "value 7 appears twice");
}

TEST_F(CheckpointTest, RefusesShuffleIndexOutOfRange) {
  RandomCheckpointOptions options;
  options.shuffle_dtype = DType::kI32;
  Write(SmallConfig(), options, [](std::vector<TensorToWrite>& t) {
    std::vector<int32_t> perm(64);
    for (int32_t i = 0; i < 64; ++i) perm[i] = i;
    perm[5] = 64;
    Find(t, "memory.1.shuffle_index").bytes = I32Bytes(perm);
  });
  ExpectRefused("model.safetensors", "memory.1.shuffle_index", "element 5 is 64");
  Write(SmallConfig(), options, [](std::vector<TensorToWrite>& t) {
    std::vector<int32_t> perm(64);
    for (int32_t i = 0; i < 64; ++i) perm[i] = i;
    perm[0] = -1;
    Find(t, "memory.1.shuffle_index").bytes = I32Bytes(perm);
  });
  ExpectRefused("model.safetensors", "memory.1.shuffle_index", "element 0 is -1");
}

TEST_F(CheckpointTest, ShuffleIndexCheckCanBeSkipped) {
  Write(SmallConfig(), {}, [](std::vector<TensorToWrite>& t) {
    Find(t, "memory.0.shuffle_index").bytes = I64Bytes(std::vector<int64_t>(64, 0));
  });
  CheckpointOptions options;
  options.check_shuffle_index = false;
  EXPECT_TRUE(Checkpoint::Open(dir_, options).ok());
}

TEST_F(CheckpointTest, RefusesIndexNamingMissingFile) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  const std::string index_path = Path("model.safetensors.index.json");
  Json index = Json::parse(ReadAll(index_path));
  index["weight_map"]["memory.1.values"] = "model-values-9.safetensors";
  WriteAll(index_path, index.dump());
  ExpectRefused("model.safetensors.index.json", "memory.1.values", "model-values-9.safetensors");
}

TEST_F(CheckpointTest, RefusesIndexNamingTensorNotInFile) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  const std::string index_path = Path("model.safetensors.index.json");
  Json index = Json::parse(ReadAll(index_path));
  index["weight_map"]["memory.1.keys"] = "model-values-1.safetensors";
  WriteAll(index_path, index.dump());
  ExpectRefused("model.safetensors.index.json", "memory.1.keys", "does not contain it");
}

TEST_F(CheckpointTest, RefusesTensorTheIndexDoesNotList) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  const std::string index_path = Path("model.safetensors.index.json");
  Json index = Json::parse(ReadAll(index_path));
  index["weight_map"].erase("final_norm.weight");
  WriteAll(index_path, index.dump());
  ExpectRefused("model-dense.safetensors", "final_norm.weight", "not listed");
}

TEST_F(CheckpointTest, RefusesIndexEscapingTheDirectory) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  const std::string index_path = Path("model.safetensors.index.json");
  Json index = Json::parse(ReadAll(index_path));
  index["weight_map"]["memory.0.values"] = "../model-values-0.safetensors";
  WriteAll(index_path, index.dump());
  ExpectRefused("model.safetensors.index.json", "memory.0.values", "inside the model directory");
}

TEST_F(CheckpointTest, RefusesSeveralFilesWithoutIndex) {
  RandomCheckpointOptions options;
  options.split_files = true;
  Write(SmallConfig(), options);
  fs::remove(Path("model.safetensors.index.json"));
  absl::Status s = Open().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("model.safetensors.index.json"), std::string::npos) << s;
}

TEST_F(CheckpointTest, RefusesNoSafetensorsFile) {
  Write(SmallConfig());
  fs::remove(Path("model.safetensors"));
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, RefusesBadConfigNamingConfigFile) {
  Write(SmallConfig());
  Json config = Json::parse(ReadAll(Path("config.json")));
  config["memory"]["value_expand"] = 2;
  WriteAll(Path("config.json"), config.dump());
  absl::Status s = Open().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find(Path("config.json")), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("memory.value_expand"), std::string::npos) << s;
}

}  // namespace
}  // namespace ultramem

// ---- Synthetic value tables (common/synthetic_values.h) ----

namespace ultramem {
namespace {

TEST_F(CheckpointTest, SyntheticValuesAreComputedNotStored) {
  RandomCheckpointOptions opts;
  opts.synthetic_values = SyntheticValues{12345, 0.25f};
  ASSERT_TRUE(WriteRandomCheckpoint(dir_, SmallConfig(), opts).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Open();
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_TRUE((*ckpt)->synthetic_values().has_value());
  EXPECT_EQ((*ckpt)->synthetic_values()->seed, 12345u);
  EXPECT_EQ((*ckpt)->Get("memory.1.values").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*ckpt)->Get("memory.1.keys").ok());
  // Rows 3..7, columns 2..6 of layer 1 equal the function, and the whole table has the right
  // spread (not constant, inside [-scale, scale]).
  std::vector<float> block(4 * 4);
  ASSERT_TRUE((*ckpt)->ReadF32Block("memory.1.values", 3, 7, 2, 6, block.data()).ok());
  std::vector<uint16_t> expect(block.size());
  FillSyntheticBf16(*(*ckpt)->synthetic_values(), 1, 3, 7, 2, 6, expect.data());
  for (size_t i = 0; i < block.size(); ++i) EXPECT_EQ(block[i], Bf16ToF32(expect[i])) << i;
  absl::StatusOr<std::vector<float>> all = (*ckpt)->ReadF32("memory.0.values");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 16u * 8u);
  const auto [lo, hi] = std::minmax_element(all->begin(), all->end());
  EXPECT_GE(*lo, -0.25f);
  EXPECT_LE(*hi, 0.25f);
  EXPECT_LT(*lo, -0.05f);
  EXPECT_GT(*hi, 0.05f);
  // Layers differ.
  std::vector<float> other(16 * 8);
  ASSERT_TRUE((*ckpt)->ReadF32Block("memory.1.values", 0, 16, 0, 8, other.data()).ok());
  EXPECT_NE(*all, other);
  EXPECT_EQ((*ckpt)->ReadF32Block("memory.1.values", 0, 17, 0, 8, other.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, SyntheticValuesRefuseStoredValuesAndBadFiles) {
  RandomCheckpointOptions opts;
  opts.synthetic_values = SyntheticValues{1, 0.05f};
  ASSERT_TRUE(WriteRandomCheckpoint(dir_, SmallConfig(), opts).ok());
  ASSERT_TRUE(Open().ok());
  WriteAll(Path(kSyntheticValuesFile), "{\"seed\": 1, \"scale\": -2}");
  ExpectRefused(kSyntheticValuesFile, "", "scale");
  WriteAll(Path(kSyntheticValuesFile), "{\"scale\": 0.1}");
  ExpectRefused(kSyntheticValuesFile, "", "seed");
  // A checkpoint that stores its values and also declares them synthetic: the stored table is
  // an extra tensor.
  fs::remove_all(dir_);
  Write(SmallConfig());
  WriteAll(Path(kSyntheticValuesFile), "{\"seed\": 1}");
  ExpectRefused("model.safetensors", "memory.0.values", "not part of this model");
}

}  // namespace
}  // namespace ultramem
