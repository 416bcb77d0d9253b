// Implementation of gemv.cuh.
#include "compute_node/cuda/gemv.cuh"

namespace ultramem::cuda {

static constexpr int kWarps = 8;

static __device__ __forceinline__ float Dot8(const uint4& a, const uint4& b) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.0f;
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const float2 fa = __bfloat1622float2(pa[u]);
    const float2 fb = __bfloat1622float2(pb[u]);
    s += fa.x * fb.x + fa.y * fb.y;
  }
  return s;
}

template <int kTokens>
static __global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const __nv_bfloat16* x, const __nv_bfloat16* w, int out_dim, int in_dim, float* y,
               bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= out_dim) return;
  const int chunks = in_dim / 8;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * in_dim);
  float acc[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc[t] = 0.0f;
#pragma unroll 4
  for (int c = lane; c < chunks; c += 32) {
    const uint4 wv = __ldg(wr + c);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(t) * in_dim) + c);
      acc[t] += Dot8(wv, xv);
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    float s = acc[t];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      float* dst = y + static_cast<int64_t>(t) * out_dim + row;
      *dst = accumulate ? *dst + s : s;
    }
  }
}

template <int kTokens>
static void Launch(const __nv_bfloat16* x, const __nv_bfloat16* w, int out_dim, int in_dim,
                   float* y, bool accumulate, cudaStream_t stream) {
  GemvKernel<kTokens><<<(out_dim + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(
      x, w, out_dim, in_dim, y, accumulate);
}

void LaunchGemvBf16(const __nv_bfloat16* x, int tokens, const __nv_bfloat16* w, int out_dim,
                    int in_dim, float* y, bool accumulate, cudaStream_t stream) {
  switch (tokens) {
    case 1: return Launch<1>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 2: return Launch<2>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 3: return Launch<3>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 4: return Launch<4>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 5: return Launch<5>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 6: return Launch<6>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 7: return Launch<7>(x, w, out_dim, in_dim, y, accumulate, stream);
    case 8: return Launch<8>(x, w, out_dim, in_dim, y, accumulate, stream);
    default: return;
  }
}

}  // namespace ultramem::cuda
