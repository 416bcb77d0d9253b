// bf16 helpers shared by the compute node's and the memory server's kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ultramem::cuda {

// Eight bf16 values packed in a 16-byte word, as floats.
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& raw, float* f) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const float2 v = __bfloat1622float2(pairs[u]);
    f[2 * u] = v.x;
    f[2 * u + 1] = v.y;
  }
}

}  // namespace ultramem::cuda
