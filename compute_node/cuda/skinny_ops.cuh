// Pieces the skinny products share (the GEMVs, the tensor-core skinny GEMM, the persistent decode
// kernel, the cluster attention): a streaming 16-byte weight load, a 16-byte shared-memory load
// and the fp32 dot product of eight bf16 pairs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ultramem::cuda {

// A 16-byte load of data read once (weights): read-only path, no L1 allocation.
__device__ __forceinline__ uint4 LoadStream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// A 16-byte load from shared memory as one ld.shared.v4: left to itself the compiler splits a
// uint4 read through a reference that is then reinterpreted as bf16 pairs (Dot8, Bf16x8ToFloat)
// into eight 4-byte loads.
__device__ __forceinline__ uint4 LoadShared16(const void* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(p))));
  return v;
}

// Eight bf16 pairs packed in 16-byte words, summed in fp32 in a fixed left-to-right order (so
// kernels sharing it agree to the bit).
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
