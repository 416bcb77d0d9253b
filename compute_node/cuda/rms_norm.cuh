// RMSNorm of fp32 rows into bf16 (the input of the next matrix product):
//   out[i, :] = x[src_i, :] / sqrt(mean(x²) + eps) * w,   src_i = rows ? rows[i] : i
// `out2`, when not null, receives a second copy (the memory layers' private u).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ultramem::cuda {

void LaunchRmsNorm(const float* x, const float* w, int rows_count, int dim, float eps,
                   const int32_t* rows, __nv_bfloat16* out, __nv_bfloat16* out2,
                   cudaStream_t stream);

}  // namespace ultramem::cuda
