// Tests of common/model_config.h: config.json parsing, validation and the MODEL.md §4 tensor table,
// plus ModelConfigToJson (common/checkpoint_writer.h).
#include "common/model_config.h"

#include <string>
#include <vector>

#include "common/checkpoint_writer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ultramem {
namespace {

using Json = nlohmann::json;
constexpr char kFile[] = "/models/m/config.json";

// The example of MODEL.md §4.
Json ExampleJson() {
  return Json::parse(R"({
    "model_type": "ultramem",
    "vocab_size": 512, "hidden_size": 256, "num_layers": 8,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
    "intermediate_size": 688, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 2048, "tie_word_embeddings": false,
    "memory": {
      "layers": [[1, 3], [4, 6]],
      "knum": 64, "value_expand": 4, "key_dim": 64, "value_dim": 128,
      "heads": 2, "topk": 16, "tucker_rank": 2, "tucker_cores": 2, "norm_eps": 1e-5
    },
    "tokenizer": {"type": "bytes", "special_tokens": {"<|bos|>": 256, "<|eos|>": 257}}
  })");
}

absl::StatusOr<ModelConfig> Parse(const Json& j) { return ParseModelConfig(j.dump(), kFile); }

// InvalidArgument naming the file and the dotted key.
void ExpectBadKey(const Json& j, const std::string& key) {
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << key;
  const std::string message(c.status().message());
  EXPECT_NE(message.find(kFile), std::string::npos) << message;
  EXPECT_NE(message.find("\"" + key + "\""), std::string::npos) << message;
}

TEST(ModelConfigTest, ParsesTheContractExample) {
  absl::StatusOr<ModelConfig> c = Parse(ExampleJson());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "ultramem");
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->hidden_size, 256);
  EXPECT_EQ(c->num_layers, 8);
  EXPECT_EQ(c->num_attention_heads, 8);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->intermediate_size, 688);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_FALSE(c->tie_word_embeddings);
  ASSERT_TRUE(c->memory.has_value());
  const MemoryConfig& m = *c->memory;
  EXPECT_EQ(m.layers, (std::vector<std::pair<int, int>>{{1, 3}, {4, 6}}));
  EXPECT_EQ(m.knum, 64);
  EXPECT_EQ(m.value_expand, 4);
  EXPECT_EQ(m.ExpandSqrt(), 2);
  EXPECT_EQ(m.NumKeys(), 128);
  EXPECT_EQ(m.NumRows(), 4096);
  EXPECT_EQ(m.NumVirtual(), 16384);
  EXPECT_EQ(m.ChunkDim(), 64);
  EXPECT_EQ(m.SelectionsPerToken(), 32);
  EXPECT_EQ(c->NumMemoryLayers(), 2);
  EXPECT_EQ(c->tokenizer.type, "bytes");
  EXPECT_EQ(c->tokenizer.special_tokens.at("<|eos|>"), 257);
  EXPECT_EQ(Json::parse(c->tokenizer.raw_json), ExampleJson()["tokenizer"]);
}

TEST(ModelConfigTest, OptionalKeysTakeDefaults) {
  Json j = ExampleJson();
  for (const char* key : {"rms_norm_eps", "rope_theta", "max_position_embeddings",
                          "tie_word_embeddings", "tokenizer", "memory"}) {
    j.erase(key);
  }
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->memory.has_value());
  EXPECT_EQ(c->NumMemoryLayers(), 0);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->tokenizer.type, "bytes");
}

TEST(ModelConfigTest, ExpectedTensorsFollowTheTable) {
  absl::StatusOr<ModelConfig> c = Parse(ExampleJson());
  ASSERT_TRUE(c.ok());
  const auto t = ExpectedTensors(*c);
  // embed + 9 per block + final_norm + lm_head + (9 + h cores) per memory layer.
  ASSERT_EQ(t.size(), 1u + 9 * 8 + 1 + 1 + 2 * (9 + 2));
  std::map<std::string, std::vector<int64_t>> m(t.begin(), t.end());
  ASSERT_EQ(m.size(), t.size()) << "duplicate names";
  EXPECT_EQ(t.front().first, "embed_tokens.weight");
  EXPECT_EQ(m["embed_tokens.weight"], (std::vector<int64_t>{512, 256}));
  EXPECT_EQ(m["layers.7.attn_norm.weight"], (std::vector<int64_t>{256}));
  EXPECT_EQ(m["layers.0.attn.q_proj.weight"], (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(m["layers.0.attn.k_proj.weight"], (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(m["layers.0.attn.v_proj.weight"], (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(m["layers.0.attn.o_proj.weight"], (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(m["layers.3.ffn_norm.weight"], (std::vector<int64_t>{256}));
  EXPECT_EQ(m["layers.3.ffn.gate_proj.weight"], (std::vector<int64_t>{688, 256}));
  EXPECT_EQ(m["layers.3.ffn.up_proj.weight"], (std::vector<int64_t>{688, 256}));
  EXPECT_EQ(m["layers.3.ffn.down_proj.weight"], (std::vector<int64_t>{256, 688}));
  EXPECT_EQ(m["final_norm.weight"], (std::vector<int64_t>{256}));
  EXPECT_EQ(m["lm_head.weight"], (std::vector<int64_t>{512, 256}));
  EXPECT_EQ(m["memory.1.query_proj.weight"], (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(m["memory.1.query_norm.weight"], (std::vector<int64_t>{64}));
  EXPECT_EQ(m["memory.1.keys_norm.weight"], (std::vector<int64_t>{64}));
  EXPECT_EQ(m["memory.1.keys"], (std::vector<int64_t>{2, 2, 128, 64, 2}));
  EXPECT_EQ(m["memory.1.tucker_core.0"], (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(m["memory.1.tucker_core.1"], (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(m.count("memory.1.tucker_core.2"), 0u);
  EXPECT_EQ(m["memory.1.tucker_core_u"], (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(m["memory.1.tucker_core_v"], (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(m["memory.1.values_proj.weight"], (std::vector<int64_t>{256, 512}));
  EXPECT_EQ(m["memory.1.shuffle_index"], (std::vector<int64_t>{16384}));
  EXPECT_EQ(m["memory.1.values"], (std::vector<int64_t>{4096, 128}));
  EXPECT_EQ(m.count("memory.2.values"), 0u);
}

TEST(ModelConfigTest, TiedEmbeddingsHaveNoLmHead) {
  Json j = ExampleJson();
  j["tie_word_embeddings"] = true;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok());
  for (const auto& [name, shape] : ExpectedTensors(*c)) EXPECT_NE(name, "lm_head.weight");
}

TEST(ModelConfigTest, DenseModelHasNoMemoryTensors) {
  Json j = ExampleJson();
  j.erase("memory");
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok());
  const auto t = ExpectedTensors(*c);
  EXPECT_EQ(t.size(), 1u + 9 * 8 + 1 + 1);
  for (const auto& [name, shape] : t) EXPECT_NE(name.rfind("memory.", 0), 0u) << name;
}

TEST(ModelConfigTest, RefusesExpandNotASquare) {
  Json j = ExampleJson();
  j["memory"]["value_expand"] = 3;
  ExpectBadKey(j, "memory.value_expand");
  j["memory"]["value_expand"] = 0;
  ExpectBadKey(j, "memory.value_expand");
}

TEST(ModelConfigTest, RefusesValueDimNotDivisibleByCores) {
  Json j = ExampleJson();
  j["memory"]["tucker_cores"] = 3;
  ExpectBadKey(j, "memory.value_dim");
}

TEST(ModelConfigTest, RefusesSpanOutOfRange) {
  Json j = ExampleJson();
  j["memory"]["layers"] = Json::parse("[[1, 3], [4, 8]]");  // output_block == L
  ExpectBadKey(j, "memory.layers[1]");
  j["memory"]["layers"] = Json::parse("[[-1, 3]]");
  ExpectBadKey(j, "memory.layers[0]");
  j["memory"]["layers"] = Json::parse("[[5, 4]]");  // reversed
  ExpectBadKey(j, "memory.layers[0]");
  j["memory"]["layers"] = Json::parse("[[1, 2, 3]]");
  ExpectBadKey(j, "memory.layers[0]");
  j["memory"]["layers"] = Json::array();
  ExpectBadKey(j, "memory.layers");
}

TEST(ModelConfigTest, RefusesMissingKeys) {
  for (const char* key : {"model_type", "vocab_size", "hidden_size", "num_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim",
                          "intermediate_size"}) {
    Json j = ExampleJson();
    j.erase(key);
    ExpectBadKey(j, key);
  }
  for (const char* key : {"layers", "knum", "value_expand", "key_dim", "value_dim", "heads", "topk",
                          "tucker_rank", "tucker_cores"}) {
    Json j = ExampleJson();
    j["memory"].erase(key);
    ExpectBadKey(j, std::string("memory.") + key);
  }
}

TEST(ModelConfigTest, RefusesWrongTypesAndValues) {
  struct Case {
    const char* key;
    Json value;
  };
  const std::vector<Case> cases = {
      {"hidden_size", "256"},  {"hidden_size", 256.5}, {"hidden_size", 0},
      {"num_layers", -2},      {"vocab_size", 1e12},   {"rms_norm_eps", 0},
      {"rope_theta", "big"},   {"tie_word_embeddings", 1}, {"model_type", "llama"},
      {"head_dim", 31},        {"num_key_value_heads", 3}, {"memory", 5},
      {"tokenizer", "bytes"},  {"hidden_size", 4294967296ull},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    Json j = ExampleJson();
    j[c.key] = c.value;
    ExpectBadKey(j, c.key);
  }
}

TEST(ModelConfigTest, RefusesTopkAboveKeyCount) {
  Json j = ExampleJson();
  j["memory"]["topk"] = 129;  // n = 2 * 64 = 128
  ExpectBadKey(j, "memory.topk");
}

TEST(ModelConfigTest, RefusesSpecialTokenOutOfRange) {
  Json j = ExampleJson();
  j["tokenizer"]["special_tokens"]["<|x|>"] = 512;
  ExpectBadKey(j, "tokenizer.special_tokens.<|x|>");
  j["tokenizer"]["special_tokens"]["<|x|>"] = 65;
  ExpectBadKey(j, "tokenizer.special_tokens.<|x|>");
}

TEST(ModelConfigTest, RefusesInvalidJson) {
  for (const char* text : {"", "{", "[]", "{\"model_type\": \"ultramem\",}"}) {
    absl::StatusOr<ModelConfig> c = ParseModelConfig(text, kFile);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(std::string(c.status().message()).find(kFile), std::string::npos);
  }
}

TEST(ModelConfigTest, ToJsonRoundTrips) {
  absl::StatusOr<ModelConfig> c = Parse(ExampleJson());
  ASSERT_TRUE(c.ok());
  absl::StatusOr<ModelConfig> back = ParseModelConfig(ModelConfigToJson(*c), kFile);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ModelConfigToJson(*back), ModelConfigToJson(*c));
  EXPECT_EQ(back->rms_norm_eps, c->rms_norm_eps);
  EXPECT_EQ(back->memory->norm_eps, c->memory->norm_eps);
  EXPECT_EQ(back->memory->layers, c->memory->layers);
  EXPECT_EQ(back->tokenizer.special_tokens, c->tokenizer.special_tokens);
  EXPECT_EQ(ExpectedTensors(*back), ExpectedTensors(*c));
}

}  // namespace
}  // namespace ultramem
