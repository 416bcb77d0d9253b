// The large products through cuBLAS: bf16 operands, fp32 accumulation and fp32 output.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "absl/status/status.h"

namespace ultramem::cuda {

// y[tokens, out_dim] = x[tokens, in_dim] · W[out_dim, in_dim]ᵀ  (+ y when accumulate).
// Row-major throughout; runs on the handle's stream.
absl::Status GemmBf16(cublasHandle_t handle, const __nv_bfloat16* x, int64_t tokens,
                      const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim, float* y,
                      bool accumulate);

}  // namespace ultramem::cuda
