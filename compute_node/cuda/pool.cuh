// Memory-layer step 10 for value tables held in this GPU's memory (the in-process mode):
//   y[t, g, col] = Σ_{k : group[t,k] == g} score[t, k, col / (Dv/h)] · values[row[t,k], col]
// bf16 rows, fp32 accumulation, y written in full as bf16 (the input of values_proj).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ultramem::cuda {

void LaunchDevicePool(const __nv_bfloat16* values, const int64_t* rows, const int32_t* groups,
                      const float* scores, int tokens, int selections, int expand, int value_dim,
                      int cores, __nv_bfloat16* y, cudaStream_t stream);

// y_bf16 = bf16(y_f32), for pooled sums that arrive from a host-side RowPooler.
void LaunchToBf16(const float* in, int64_t count, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace ultramem::cuda
