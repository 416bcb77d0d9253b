// Memory-layer steps 2 and 4 (MODEL.md §3): the query halves RMS-normalized, then the row and
// column key scores against the normalized keys K̂ (bf16, fp32 accumulation).
//   q:  [tokens, 2·Dk] fp32 (query_proj output)      qn: [2][tokens][Dk] fp32
//   keys_hat: [H][2][n·r][Dk] bf16                     scores: [H][2][tokens][n·r] fp32
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ultramem::cuda {

void LaunchQueryNorm(const float* q, const float* weight, int tokens, int key_dim, float eps,
                     float* qn, cudaStream_t stream);

void LaunchKeyScores(const float* qn, const __nv_bfloat16* keys_hat, int tokens, int heads,
                     int key_rows, int key_dim, float* scores, cudaStream_t stream);

}  // namespace ultramem::cuda
