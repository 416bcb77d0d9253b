// The dot product of eight bf16 pairs packed in 16-byte words, in fp32 (a fixed left-to-right
// order, so that kernels sharing it agree to the bit): the GEMV and the persistent decode kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ultramem::cuda {

__device__ __forceinline__ float Dot8(const uint4& a, const uint4& b) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.0f;
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const float2 fa = __bfloat1622float2(pa[u]);
    const float2 fb = __bfloat1622float2(pb[u]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

}  // namespace ultramem::cuda
