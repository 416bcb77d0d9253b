// Skinny products for decode steps of a few tokens, T <= kMaxGemvTokens, in % 8 == 0, bf16
// weights W[rows, in] with fp32 accumulation. One warp per output row (or row pair), 16-byte
// loads, a grid of at most a few blocks per multiprocessor looping over rows: the weights are
// streamed once (cuBLAS's general kernels are tuned for wide products). Fusions that save a
// launch and a round trip each:
//   input:    x bf16 [T, in], or fp32 rows RMS-normalized in each block's prologue
//             (x[t] = bf16(x_f32[src_t] / sqrt(mean(x_f32[src_t]²) + eps) · norm_weight),
//             src_t = rows ? rows[t] : t), optionally also written to `normed_out` [T, in];
//   output:   y fp32 [T, out] stored or accumulated (the residual add), or the SwiGLU
//             activation act[t, i] = bf16(silu(g_i) · u_i) where g = W[i]·x, u = W[out + i]·x
//             (W is then the fused [gate; up] matrix of 2·out rows).
// Launched with programmatic dependent launch (launch.cuh): each warp loads its first batch of
// weights into registers (and asks L2 for the rest of its first rows) before waiting on the
// previous kernel. One-token products whose weights spread over the multiprocessors fit in
// shared memory (at most 96 KB a block) take the staged variant instead: each block bulk-copies
// its whole weight slice into shared memory and lets the next kernel launch before it waits, so
// the weights of the next products stream in while this one waits for its input
// (UM_CUDA_GEMV_STAGED=0 turns it off). Its gate/up products run on the tensor cores
// (UM_CUDA_GEMV_MMA), the others on CUDA cores, which measured faster for them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace ultramem::cuda {

inline constexpr int kMaxGemvTokens = 8;

// Products of at most this many tokens take the GEMV: kPreferredGemvTokens, or what the
// environment sets in UM_CUDA_GEMV_MAX_TOKENS (0..kMaxGemvTokens); the tensor-core skinny kernel
// takes the rest up to its limit. One token only by default: on the H200 (2026-11-28, the
// 1024/2816 model) the tensor-core kernel took 408/429/500 us a step at 2/4/8 tokens where the
// GEMV took 451/664/1144.
inline constexpr int kPreferredGemvTokens = 1;
int GemvMaxTokens();

enum class GemvOutput { kStore, kAccumulate, kSwiGlu };

struct GemvArgs {
  int tokens = 0;
  int out_dim = 0;  // rows of y (for kSwiGlu: columns of act; W has 2·out_dim rows)
  int in_dim = 0;
  const __nv_bfloat16* w = nullptr;
  // Input: x, or x_f32 (+ norm_weight, eps, rows, normed_out).
  const __nv_bfloat16* x = nullptr;
  const float* x_f32 = nullptr;
  const float* norm_weight = nullptr;
  float eps = 0.0f;
  const int32_t* rows = nullptr;
  __nv_bfloat16* normed_out = nullptr;
  // Output.
  GemvOutput output = GemvOutput::kStore;
  float* y = nullptr;
  __nv_bfloat16* act = nullptr;
  // The staged variant only (LaunchGemvStaged): x stays fp32 after the norm (products whose
  // consumers must match fp32 sums: the memory key scores, whose top-m flips on bf16 rounding),
  // and, with x_group_rows > 0, output rows alternate between x's two halves in groups of that
  // many rows (row r reads x_f32[(r / x_group_rows) % 2 · in_dim ..]: a memory layer's row and
  // column key scores against the two normalized query halves).
  bool fp32_input = false;
  int x_group_rows = 0;
  // May take the staged variant (when it fits and UM_CUDA_GEMV_STAGED is not 0); tests clear it to check
  // the register variant on the same shapes.
  bool staged = true;
};

void LaunchGemv(const GemvArgs& args, cudaStream_t stream);
// The staged variant alone (one token): false, and nothing launched, where it does not fit.
bool LaunchGemvStaged(const GemvArgs& args, cudaStream_t stream);

// The staged GEMV's timeline, for UM_CUDA_GEMV_TRACE=1 (read once): block 0 of every launch
// records when it started (before its PDL wait), the cycles to the wait's return, from there to
// its input and weights being ready, and to its outputs written, and whether the weights were
// already in shared memory when the wait returned.
struct GemvTraceRecord {
  int out_dim, in_dim;
  unsigned long long start_ns, end_ns;  // %globaltimer
  unsigned long long wait_cycles, ready_cycles, end_cycles;
  bool ready_at_wait;
};
bool GemvTraceEnabled();
// The records since the last call (at most the last 1024), oldest first; clears them.
std::vector<GemvTraceRecord> TakeGemvTrace();

// y[T, out] (+)= x[T, in] · W[out, in]ᵀ.
void LaunchGemvBf16(const __nv_bfloat16* x, int tokens, const __nv_bfloat16* w, int out_dim,
                    int in_dim, float* y, bool accumulate, cudaStream_t stream);

}  // namespace ultramem::cuda
