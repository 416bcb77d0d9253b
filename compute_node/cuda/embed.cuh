// Token embedding gather: x[t, :] = float(table[ids[t], :]).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ultramem::cuda {

void LaunchEmbed(const __nv_bfloat16* table, const int32_t* ids, int tokens, int dim, float* x,
                 cudaStream_t stream);

}  // namespace ultramem::cuda
