// The large products through cuBLAS: bf16 operands, fp32 accumulation and fp32 output.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace ultramem::cuda {

// y[tokens, out_dim] = x[tokens, in_dim] · W[out_dim, in_dim]ᵀ  (+ y when accumulate).
// Row-major throughout; runs on the handle's stream.
absl::Status GemmBf16(cublasHandle_t handle, const __nv_bfloat16* x, int64_t tokens,
                      const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim, float* y,
                      bool accumulate);

// The same product, choosing the kernel: the skinny GEMV kernel for a few tokens (gemv.cuh), the
// tensor-core skinny kernel up to kMmaPreferredMaxTokens (gemm_mma.cuh), cuBLAS otherwise. Runs on `stream`, which must be the handle's stream.
absl::Status MatMulBf16(cublasHandle_t handle, cudaStream_t stream, const __nv_bfloat16* x,
                        int64_t tokens, const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim,
                        float* y, bool accumulate);

// Memory-layer key scores for wide steps through fp32 SGEMM (no TF32: the top-m selections that
// follow flip on small score changes). qn: [2][tokens][Dk]; keys: [H][2][key_rows][Dk] fp32;
// scores: [H][2][tokens][key_rows]. The few-token kernel in memory_score.cuh reads bf16 keys.
absl::Status KeyScoresGemm(cublasHandle_t handle, const float* qn, const float* keys, int tokens,
                           int heads, int key_rows, int key_dim, float* scores);

// The same on the tensor cores at fp32 accuracy: each normalized query is split into three bf16
// parts (hi + mid + lo, LaunchQueryNorm's `parts`: [2][tokens][3·Dk]) that sum to it within
// 2^-24, and each key row is stored three times over (keys3: [H][2][key_rows][3·Dk] bf16,
// TripleKeyRows), so one bf16 GEMM with fp32 accumulation over K = 3·Dk sums K̂·hi + K̂·mid +
// K̂·lo, every product exact in fp32.
absl::Status KeyScoresGemmSplit(cublasHandle_t handle, const __nv_bfloat16* parts, const __nv_bfloat16* keys3,
                                int tokens, int heads, int key_rows, int key_dim, float* scores);
// keys [planes · rows][Dk] -> [planes · rows][3 · Dk], each row three times.
std::vector<float> TripleKeyRows(const std::vector<float>& keys, int key_dim);

}  // namespace ultramem::cuda
