// Causal GQA attention of each token over its sequence's KV cache (positions 0..position, the
// token's own K and V already written), for decode steps and prefill chunks alike:
//   out[t, head] = softmax(q·Kᵀ / sqrt(hd)) V   over kv head head / (n_h / n_kv)
// Split-K ("flash decoding"): each (token, kv head) is cut into `splits` position ranges whose
// partial softmax sums are merged by a second kernel, so a small batch still fills the GPU.
// The grid depends on tokens and splits only, never on context lengths (CUDA-graph safe).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "compute_node/cuda/kv_cache.cuh"

namespace ultramem::cuda {

inline constexpr int kMaxAttentionGroup = 16;  // n_h / n_kv supported
inline constexpr int kMaxHeadDim = 256;

// Splits to use for `tokens` tokens: enough blocks to fill about two waves of `sm_count`.
int AttentionSplits(int tokens, int num_kv_heads, int sm_count, int max_positions);

// Floats of scratch the split path needs: tokens · n_h · splits · (hd + 2).
inline long long AttentionScratchFloats(int tokens, int num_heads, int head_dim, int splits) {
  return static_cast<long long>(tokens) * num_heads * splits * (head_dim + 2);
}

// qkv: [tokens, (n_h + 2 n_kv)·hd] fp32 with q rotated; out: [tokens, n_h·hd] bf16.
void LaunchAttention(const float* qkv, const TokenKv* kv, int tokens, int num_heads,
                     int num_kv_heads, int head_dim, int layer, int splits, float* scratch,
                     __nv_bfloat16* out, cudaStream_t stream);

}  // namespace ultramem::cuda
