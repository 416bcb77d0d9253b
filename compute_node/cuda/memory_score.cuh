// Memory-layer steps 2 and 4 (MODEL.md §3): the query halves RMS-normalized, then the row and
// column key scores against the normalized keys K̂ (bf16, fp32 accumulation).
//   q:  [tokens, 2·Dk] fp32 (query_proj output)      qn: [2][tokens][Dk] fp32
//   keys_hat: [H][2][n·r][Dk] bf16                     scores: [H][2][tokens][n·r] fp32
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ultramem::cuda {

// With `parts` (bf16 [2][tokens][3·Dk]) also each normalized half split into three bf16 parts
// for KeyScoresGemmSplit (gemm.h).
void LaunchQueryNorm(const float* q, const float* weight, int tokens, int key_dim, float eps,
                     float* qn, cudaStream_t stream, __nv_bfloat16* parts = nullptr);

void LaunchKeyScores(const float* qn, const __nv_bfloat16* keys_hat, int tokens, int heads,
                     int key_rows, int key_dim, float* scores, cudaStream_t stream);

// Steps 2 and 4 for decode steps: at one token the staged GEMV (gemv.cuh) over every key row at
// once, each block normalizing its side's query half in fp32 in its prologue, the keys bulk-copied
// into shared memory before its PDL wait (UM_CUDA_KEYSCORE_STAGED=0 turns it off); otherwise
// LaunchQueryNorm into `qn`, then LaunchKeyScores.
void LaunchQueryKeyScores(const float* q, const float* weight, float eps, const __nv_bfloat16* keys_hat,
                          int tokens, int heads, int key_rows, int key_dim, float* qn, float* scores,
                          cudaStream_t stream);

}  // namespace ultramem::cuda
