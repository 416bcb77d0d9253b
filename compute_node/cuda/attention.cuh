// Causal GQA attention of each token over its sequence's KV cache (positions 0..position), for
// decode steps and prefill chunks alike:
//   out[t, head] = softmax(q·Kᵀ / sqrt(hd)) V   over kv head head / (n_h / n_kv)
// Split-K ("flash decoding"): each (token, kv head) is cut into `splits` position ranges so that a
// small batch still fills the GPU; the last block of a (token, kv head) to finish merges the
// partial softmax sums (an arrival counter per (token, kv head), left at zero for the next call).
// The grid depends on tokens and splits only, never on context lengths (CUDA-graph safe).
//
// Decode steps (every token of the call from a different sequence) may pass `rope`: the kernel
// then rotates q and the token's own k itself and writes the token's K and V to the cache, so no
// RoPE kernel runs first (qkv unrotated; it may be rotated in place for shapes the fused kernel
// does not cover). Without `rope`, LaunchRopeAndCache must have run (q rotated in qkv, the new
// K and V in the cache), which is what prefill chunks (several tokens of one sequence) need.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "compute_node/cuda/kv_cache.cuh"

namespace ultramem::cuda {

inline constexpr int kMaxAttentionGroup = 16;  // n_h / n_kv supported
inline constexpr int kMaxHeadDim = 256;

// Splits to use for `tokens` tokens: enough blocks to fill about two waves of `sm_count`
// (UM_CUDA_ATTN_WAVES, read once, sets another number of waves for measuring).
int AttentionSplits(int tokens, int num_kv_heads, int sm_count, int max_positions);

// Floats of scratch the split path needs: tokens · n_h · splits · (hd + 2).
inline long long AttentionScratchFloats(int tokens, int num_heads, int head_dim, int splits) {
  return static_cast<long long>(tokens) * num_heads * splits * (head_dim + 2);
}

// Ints of arrival counters: tokens · n_kv, zeroed once by the caller (kernels leave them zero).
inline long long AttentionCounterInts(int tokens, int num_kv_heads) {
  return static_cast<long long>(tokens) * num_kv_heads;
}

// qkv: [tokens, (n_h + 2 n_kv)·hd] fp32; rope: null, or [max_positions, hd/2] (cos, sin) pairs;
// out: [tokens, n_h·hd] bf16.
void LaunchAttention(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                     int num_kv_heads, int head_dim, int layer, int splits, float* scratch,
                     int* counters, __nv_bfloat16* out, cudaStream_t stream);

// Small decode steps with `rope` (at most about two waves of cluster blocks: tokens · n_kv · 8 ≤
// 2 · multiprocessors; head_dim 64 or 128, group 1/2/4/8) take the cluster kernel
// (attention_cluster.cu): a (token, kv head) is a cluster of 8 blocks that stage their share of
// the K/V rows in shared memory (starting before the PDL wait) and merge their partial sums
// through distributed shared memory; `splits`, scratch and counters are then unused. Returns
// false (and launches nothing) for other shapes, prefill, or when turned off
// (UM_CUDA_ATTN_CLUSTER=0, or SetAttentionClusterForTesting(0)).
bool LaunchAttentionCluster(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                            int num_kv_heads, int head_dim, int layer, __nv_bfloat16* out,
                            cudaStream_t stream);
// -1: the environment decides (the default); 0: off; 1: on.
void SetAttentionClusterForTesting(int enabled);
// The cluster kernel's tile of positions: 64 or 128 (head_dim 64; 64 for 128), 0 by the step's
// size, -1 the environment decides (UM_CUDA_ATTN_CLUSTER_TILE, else by the step's size).
void SetAttentionClusterTileForTesting(int tile);

// Wider decode steps with `rope` (at least half as many (token, kv head) pairs as multiprocessors;
// head_dim 64 or 128, group 1/2/4/8) take the staged kernel (attention_staged.cu): a block per
// (token, kv head, split) as in the fast kernel, each warp streaming its own positions into
// shared memory through a cp.async ring (the first chunks requested before the PDL wait), scores
// and P·V on the tensor cores with the softmax in registers, splits merged through scratch and
// counters as in the fast kernel. Returns false (and launches nothing) for other shapes, prefill,
// or when turned off (UM_CUDA_ATTN_STAGED=0; UM_CUDA_ATTN_STAGED=2 takes it for every decode
// step). Tests: SetAttentionStagedForTesting with -1 (the environment), 0, 1 or 2 as the variable.
bool LaunchAttentionStaged(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                           int num_kv_heads, int head_dim, int layer, int splits, float* scratch, int* counters,
                           __nv_bfloat16* out, cudaStream_t stream);
void SetAttentionStagedForTesting(int mode);

}  // namespace ultramem::cuda
