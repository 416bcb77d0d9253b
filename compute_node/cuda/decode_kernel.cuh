// The persistent decode kernel: the dense work of a decode step of at most 8 tokens (every token
// from its own sequence) as one launch per stretch of the block loop, instead of five kernels per
// block. One block per SM runs a list of phases (qkv with the attention norm, attention, wo and
// the residual, gate/up with the FFN norm and SwiGLU, down and the residual, a memory layer's
// value projection and the residual), separated by grid-wide barriers. Each phase's rows are
// split evenly over the blocks; a producer warp per block streams the block's weight rows of the
// coming phases into a ring of shared-memory slots with bulk asynchronous copies (TMA), running
// ahead across the barriers, so the weights keep arriving while the consumers wait for the rest
// of the grid. Attention runs the same AttentionItem as the standalone kernel, on groups of 128
// consumer threads.
//
// The engine cuts the phase list at the memory layers' fork and join points (the memory layer
// reads u_b after block b's gate/up phase; its output joins before the value projection) and runs
// the memory layers' own kernels on the side stream between launches, as before.
//
// An experiment, off unless UM_CUDA_DECODE_KERNEL=1: on the H200 (2026-11-28, bench/RESULTS.md)
// a 1-token step of the 1024/2816 dense model took 457 us against 309 us for the per-op kernels.
// Its trace (UM_CUDA_DECODE_TRACE=1) puts each of the 60 phases at ~1.5-2 us of grid barrier,
// ~1-2 us of staging the input through L2 and ~2-5 us of products with 8 consumer warps per SM
// (the register budget of one 288-thread block), where the per-op GEMV hides latency with 32
// warps per SM. Fewer phases or more warps would have to come first.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "compute_node/cuda/kv_cache.cuh"

namespace ultramem::cuda {

inline constexpr int kMaxDecodeKernelTokens = 8;
inline constexpr int kTracePoints = 5;

// Attention splits for the decode kernel: about one (token, kv head, split) item per block, and
// the merge's tables (tokens · heads · splits ≤ 1024) bounded.
int DecodeKernelSplits(int tokens, int num_heads, int num_kv_heads, int grid, int max_splits);

enum class DecodePhaseKind : int32_t { kQkv, kAttention, kWo, kGateUp, kDown, kValuesProj };

// One phase. GEMV phases read weight rows [out_dim (2·out_dim for gate/up: gate rows, then up
// rows), in_dim] in bf16.
struct DecodePhase {
  DecodePhaseKind kind = DecodePhaseKind::kQkv;
  int32_t layer = 0;    // attention: the block, i.e. the KV-cache layer
  int32_t out_dim = 0;  // rows (gate/up: F)
  int32_t in_dim = 0;
  const __nv_bfloat16* w = nullptr;
  const float* norm_weight = nullptr;   // qkv, gate/up: RMSNorm of the residual x is the input
  const __nv_bfloat16* x = nullptr;     // down, values_proj: the input [T, in_dim] (wo: merged from scratch)
  __nv_bfloat16* normed_out = nullptr;  // gate/up: the normalized x ([T, in_dim]), or null
};

struct DecodeKernelArgs {
  const DecodePhase* phases = nullptr;  // device memory
  int begin = 0, end = 0;               // the phases this launch runs
  int tokens = 0;
  int hidden = 0;
  float eps = 0.0f;
  float* x = nullptr;                   // [T, hidden] fp32 residual stream
  float* qkv = nullptr;                 // [T, (n_h + 2 n_kv)·hd] fp32
  __nv_bfloat16* act = nullptr;         // [T, F] SwiGLU output
  // Attention (as LaunchAttention's decode path, rope given), its splits' partials left in
  // scratch ([t][head][split][hd + 2]) and merged while staging the wo phase's input.
  const TokenKv* kv = nullptr;
  const float2* rope = nullptr;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0, splits = 1;  // DecodeKernelSplits
  float* scratch = nullptr;
  // Blocks, at most one per SM; the same for every launch sharing `barrier`. SMs left out stay
  // free for the side stream's memory-layer kernels (the kernel leaves them no registers).
  int grid = 0;
  // Grid barrier: a 64-bit counter in device memory, zeroed once; every launch leaves it a
  // multiple of the grid size, so it needs no reset between launches or graph replays.
  unsigned long long* barrier = nullptr;
  // Optional: block 0's timestamps (ns), kTracePoints per phase (before the barrier, after it,
  // input staged, done, then the time spent waiting for weights), for UM_CUDA_DECODE_TRACE=1.
  long long* trace = nullptr;
};

// Whether the kernel covers `tokens` tokens of a model with these attention shapes and phases
// (host copies): head_dim/group among the compiled ones, every in_dim a multiple of 8, a row (a
// gate/up row pair) fitting one staging slot, the shared memory within the device's limit.
bool DecodeKernelSupports(int tokens, int head_dim, int num_heads, int num_kv_heads,
                          const DecodePhase* phases, int count);

// Launched without programmatic dependent launch (ordinary stream order).
void LaunchDecodeKernel(const DecodeKernelArgs& args, int max_in_dim, cudaStream_t stream);

}  // namespace ultramem::cuda
