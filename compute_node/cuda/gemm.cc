// Implementation of gemm.h. cuBLAS is column-major: the row-major y[T, out] is column-major
// yᵀ[out, T] = W(col-major [in, out])ᵀ · xᵀ(col-major [in, T]).
#include "compute_node/cuda/gemm.h"

#include <algorithm>

#include "compute_node/cuda/cuda_check.h"
#include "compute_node/cuda/gemm_mma.cuh"
#include "compute_node/cuda/gemv.cuh"

namespace ultramem::cuda {

absl::Status GemmBf16(cublasHandle_t handle, const __nv_bfloat16* x, int64_t tokens,
                      const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim, float* y,
                      bool accumulate) {
  if (tokens == 0) return absl::OkStatus();
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out_dim),
                            static_cast<int>(tokens), static_cast<int>(in_dim), &alpha, w,
                            CUDA_R_16BF, static_cast<int>(in_dim), x, CUDA_R_16BF,
                            static_cast<int>(in_dim), &beta, y, CUDA_R_32F,
                            static_cast<int>(out_dim), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status MatMulBf16(cublasHandle_t handle, cudaStream_t stream, const __nv_bfloat16* x,
                        int64_t tokens, const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim,
                        float* y, bool accumulate) {
  if (tokens >= 1 && tokens <= GemvMaxTokens() && in_dim % 8 == 0) {
    LaunchGemvBf16(x, static_cast<int>(tokens), w, static_cast<int>(out_dim),
                   static_cast<int>(in_dim), y, accumulate, stream);
    CUDA_CHECK(cudaGetLastError());
    return absl::OkStatus();
  }
  if (tokens <= kMmaPreferredMaxTokens && in_dim % 32 == 0 && GemmMmaEnabled()) {
    GemvArgs a;
    a.tokens = static_cast<int>(tokens);
    a.out_dim = static_cast<int>(out_dim);
    a.in_dim = static_cast<int>(in_dim);
    a.w = w;
    a.x = x;
    a.output = accumulate ? GemvOutput::kAccumulate : GemvOutput::kStore;
    a.y = y;
    LaunchGemmMma(a, stream);
    CUDA_CHECK(cudaGetLastError());
    return absl::OkStatus();
  }
  return GemmBf16(handle, x, tokens, w, out_dim, in_dim, y, accumulate);
}

absl::Status KeyScoresGemm(cublasHandle_t handle, const float* qn, const float* keys, int tokens,
                           int heads, int key_rows, int key_dim, float* scores) {
  if (tokens == 0) return absl::OkStatus();
  // Column-major: scoresᵀ[key_rows, T] = K(col-major [Dk, key_rows])ᵀ · qnᵀ(col-major [Dk, T]),
  // batched over heads for each side (strides skip the other side's planes).
  const float alpha = 1.0f, beta = 0.0f;
  const long long plane_keys = static_cast<long long>(key_rows) * key_dim;
  const long long plane_scores = static_cast<long long>(tokens) * key_rows;
  for (int side = 0; side < 2; ++side) {
    CUBLAS_CHECK(cublasSgemmStridedBatched(
        handle, CUBLAS_OP_T, CUBLAS_OP_N, key_rows, tokens, key_dim, &alpha, keys + side * plane_keys,
        key_dim, 2 * plane_keys, qn + static_cast<long long>(side) * tokens * key_dim, key_dim, 0,
        &beta, scores + side * plane_scores, key_rows, 2 * plane_scores, heads));
  }
  return absl::OkStatus();
}

absl::Status KeyScoresGemmSplit(cublasHandle_t handle, const __nv_bfloat16* parts, const __nv_bfloat16* keys3,
                                int tokens, int heads, int key_rows, int key_dim, float* scores) {
  if (tokens == 0) return absl::OkStatus();
  const float alpha = 1.0f, beta = 0.0f;
  const int k3 = 3 * key_dim;
  const long long plane_keys = static_cast<long long>(key_rows) * k3;
  const long long plane_scores = static_cast<long long>(tokens) * key_rows;
  for (int side = 0; side < 2; ++side) {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle, CUBLAS_OP_T, CUBLAS_OP_N, key_rows, tokens, k3, &alpha, keys3 + side * plane_keys, CUDA_R_16BF,
        k3, 2 * plane_keys, parts + static_cast<long long>(side) * tokens * k3, CUDA_R_16BF, k3, 0, &beta,
        scores + side * plane_scores, CUDA_R_32F, key_rows, 2 * plane_scores, heads, CUBLAS_COMPUTE_32F,
        CUBLAS_GEMM_DEFAULT));
  }
  return absl::OkStatus();
}

std::vector<float> TripleKeyRows(const std::vector<float>& keys, int key_dim) {
  const size_t rows = keys.size() / key_dim;
  std::vector<float> out(rows * 3 * key_dim);
  for (size_t r = 0; r < rows; ++r) {
    for (int c = 0; c < 3; ++c) {
      std::copy(keys.begin() + r * key_dim, keys.begin() + (r + 1) * key_dim, out.begin() + (r * 3 + c) * key_dim);
    }
  }
  return out;
}

}  // namespace ultramem::cuda
