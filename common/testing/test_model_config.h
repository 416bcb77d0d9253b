// Test support: a ModelConfig from one aggregate of its shape, so that a test names only the
// numbers it cares about (designated initializers, in declaration order). Shared by the checkpoint,
// engine, scheduler and CUDA engine tests.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/model_config.h"

namespace ultramem::testing {

struct TestShape {
  int vocab_size = 300;  // byte tokens, <|bos|> 256, <|eos|> 257, the rest unused
  int hidden_size = 64;
  int num_layers = 4;
  int heads = 4;
  int kv_heads = 2;
  int head_dim = 16;
  int intermediate_size = 96;
  int max_positions = 2048;
  std::vector<std::pair<int, int>> memory_layers;  // empty: a dense model
  int64_t knum = 8;
  int value_expand = 4;
  int key_dim = 16;
  int value_dim = 24;
  int memory_heads = 2;
  int topk = 4;
  int tucker_rank = 2;
  int tucker_cores = 2;
};

inline ModelConfig TestModelConfig(const TestShape& s) {
  ModelConfig c;
  c.model_type = "ultramem";
  c.vocab_size = s.vocab_size;
  c.hidden_size = s.hidden_size;
  c.num_layers = s.num_layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.intermediate_size = s.intermediate_size;
  c.max_position_embeddings = s.max_positions;
  if (!s.memory_layers.empty()) {
    MemoryConfig m;
    m.layers = s.memory_layers;
    m.knum = s.knum;
    m.value_expand = s.value_expand;
    m.key_dim = s.key_dim;
    m.value_dim = s.value_dim;
    m.heads = s.memory_heads;
    m.topk = s.topk;
    m.tucker_rank = s.tucker_rank;
    m.tucker_cores = s.tucker_cores;
    c.memory = m;
  }
  c.tokenizer.special_tokens = {{"<|bos|>", 256}, {"<|eos|>", 257}};
  return c;
}

}  // namespace ultramem::testing
