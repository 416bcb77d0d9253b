// RoPE (rotate-half) on the q and k heads of the fused qkv product, then K and V of every token
// written to its sequence's KV cache (bf16). q stays in qkv (fp32), rotated in place.
//   qkv: [tokens, (n_h + 2 n_kv)·hd] fp32;  rope: [max_positions, hd/2] (cos, sin) pairs
#pragma once

#include <cuda_runtime.h>

#include "compute_node/cuda/kv_cache.cuh"

namespace ultramem::cuda {

void LaunchRopeAndCache(float* qkv, const TokenKv* kv, const float2* rope, int tokens,
                        int num_heads, int num_kv_heads, int head_dim, int layer,
                        cudaStream_t stream);

}  // namespace ultramem::cuda
