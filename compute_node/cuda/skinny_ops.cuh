// Pieces the skinny products share (the GEMVs, the tensor-core skinny GEMM, the
// persistent decode kernel, the cluster and staged attention): a streaming 16-byte weight load, a 16-byte
// shared-memory load, the fp32 dot product of eight bf16 pairs and one bf16 tensor-core step.
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

// The same at a shared-memory address (SmemAddr).
__device__ __forceinline__ uint4 LoadShared16At(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
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

// The same with fp32 x: eight bf16 weights against x[0..3], x[4..7].
__device__ __forceinline__ float Dot8F32(const uint4& w, const float4& xa, const float4& xb) {
  const __nv_bfloat162* pw = reinterpret_cast<const __nv_bfloat162*>(&w);
  const float2 w0 = __bfloat1622float2(pw[0]), w1 = __bfloat1622float2(pw[1]);
  const float2 w2 = __bfloat1622float2(pw[2]), w3 = __bfloat1622float2(pw[3]);
  float s = 0.0f;
  s = fmaf(w0.x, xa.x, s);
  s = fmaf(w0.y, xa.y, s);
  s = fmaf(w1.x, xa.z, s);
  s = fmaf(w1.y, xa.w, s);
  s = fmaf(w2.x, xb.x, s);
  s = fmaf(w2.y, xb.y, s);
  s = fmaf(w3.x, xb.z, s);
  s = fmaf(w3.y, xb.w, s);
  return s;
}

// c[16x8] += a[16x16] · b[16x8] (bf16 operands, fp32 accumulators) in mma.sync's register layout:
// lane (g = lane / 4, q = lane % 4) holds a = {(g, 2q..2q+1), (g + 8, 2q..), (g, 2q + 8..),
// (g + 8, 2q + 8..)}, b = {(2q..2q+1, g), (2q + 8.., g)}, c = {(g, 2q), (g, 2q + 1), (g + 8, 2q),
// (g + 8, 2q + 1)}.
__device__ __forceinline__ void MmaBf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace ultramem::cuda
