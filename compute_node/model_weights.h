// The dense and memory-layer weights a compute node holds, converted to float32 and laid out for
// the CPU kernels. Value tables are not here: they are behind a RowPooler (in-process or remote).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "common/model_config.h"

namespace ultramem {

struct BlockWeights {
  std::vector<float> attn_norm;  // [D]
  std::vector<float> wqkv;       // [(n_h + 2 n_kv)·hd, D]: q_proj, k_proj, v_proj stacked
  std::vector<float> wo;         // [D, n_h·hd]
  std::vector<float> ffn_norm;   // [D]
  std::vector<float> w_gate_up;  // [2F, D]: gate_proj then up_proj
  std::vector<float> w_down;     // [D, F]
};

struct MemoryLayerWeights {
  int input_block = 0;
  int output_block = 0;
  std::vector<float> query_proj;  // [2·Dk, D]
  std::vector<float> query_norm;  // [Dk]
  // Normalized keys K̂ (MODEL.md §3 step 3), as [H][side][n·r][Dk] with row i·r + a holding
  // K̂[h, side, i, :, a], so that S = K̂_side · q is one matrix product.
  std::vector<float> keys_hat;
  std::vector<float> cores;       // [H][h][r][r]: tucker_core.{c}[head]
  std::vector<float> core_u;      // [H, r]
  std::vector<float> core_v;      // [H, r]
  std::vector<float> values_proj; // [D, E·Dv]
  std::vector<int64_t> shuffle_index;  // [E·N]
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> embed_tokens;  // [V, D]
  std::vector<float> lm_head;       // [V, D]; empty when tied (use embed_tokens)
  std::vector<float> final_norm;    // [D]
  std::vector<BlockWeights> blocks;
  std::vector<MemoryLayerWeights> memory;
  std::vector<float> rope_inv_freq; // [hd/2]

  const float* LmHead() const { return lm_head.empty() ? embed_tokens.data() : lm_head.data(); }
  // Bytes of the dense weights one decode token reads (for the bytes floor of benchmarks).
  int64_t DenseBytesPerToken() const;
};

// Loads everything except memory.{j}.values from a validated checkpoint.
absl::StatusOr<std::shared_ptr<const ModelWeights>> LoadModelWeights(const Checkpoint& checkpoint);

}  // namespace ultramem
