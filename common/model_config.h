// The model's config.json (MODEL.md §1, §2, §4) parsed and validated.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ultramem {

struct MemoryConfig {
  std::vector<std::pair<int, int>> layers;  // [input_block, output_block], input <= output < L
  int64_t knum = 0;                         // N = knum² physical rows
  int value_expand = 1;                     // E, a perfect square
  int key_dim = 0;                          // Dk
  int value_dim = 0;                        // Dv, divisible by tucker_cores
  int heads = 1;                            // H
  int topk = 0;                             // m; m <= n and m <= m² trivially
  int tucker_rank = 1;                      // r
  int tucker_cores = 1;                     // h
  float norm_eps = 1e-5f;

  int64_t NumRows() const { return knum * knum; }                   // N
  int ExpandSqrt() const;                                           // s = √E
  int64_t NumKeys() const { return ExpandSqrt() * knum; }           // n
  int64_t NumVirtual() const { return value_expand * NumRows(); }   // E·N
  int SelectionsPerToken() const { return heads * topk; }           // H·m
  int ChunkDim() const { return value_dim / tucker_cores; }         // Dv / h
};

struct TokenizerConfig {
  std::string type = "bytes";                       // the only type so far
  std::map<std::string, int> special_tokens;        // e.g. "<|bos|>" -> 256
  // Optional chat template pieces and stop tokens are the engine's to define (see tokenizer.h).
  std::string raw_json;                             // the whole "tokenizer" object, for extensions
};

struct ModelConfig {
  std::string model_type;  // "ultramem"
  int vocab_size = 0;      // V
  int hidden_size = 0;     // D
  int num_layers = 0;      // L
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // divides num_attention_heads
  int head_dim = 0;             // even
  int intermediate_size = 0;    // F
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  std::optional<MemoryConfig> memory;  // absent: a plain dense model
  TokenizerConfig tokenizer;

  int NumMemoryLayers() const { return memory ? static_cast<int>(memory->layers.size()) : 0; }
};

// Parses and validates config.json text. InvalidArgument naming `file_name` and the key on a
// missing key, wrong type, non-positive size, E not a perfect square, Dv not divisible by h,
// head counts that don't divide, a memory span outside [0, L) or reversed, special token ids
// outside [256, V), model_type other than "ultramem", memory.topk above n, an empty
// memory.layers. Optional (struct defaults when absent): rms_norm_eps, rope_theta,
// max_position_embeddings, tie_word_embeddings, tokenizer, memory (null or absent: dense),
// memory.norm_eps. Unknown keys are ignored.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view file_name);

// The tensors MODEL.md §4 requires for `config`, name -> shape, in a stable order.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(const ModelConfig& config);

}  // namespace ultramem
