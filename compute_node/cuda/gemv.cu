// Implementation of gemv.cuh.
#include "compute_node/cuda/gemv.cuh"

#include <algorithm>
#include <cstdlib>

#include "compute_node/cuda/skinny_ops.cuh"
#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static constexpr int kWarps = 8;
static constexpr int kThreads = kWarps * 32;
static constexpr int kBlocksPerSm = 4;

struct GemvParams {
  GemvArgs a;
  int units;  // warp work items: rows, or row pairs
};

// Weight rows of unit u: a (and b when kRows == 2; b < 0 when absent).
template <int kRows>
static __device__ __forceinline__ void UnitRows(const GemvArgs& a, int u, int* ra, int* rb) {
  if (kRows == 1) {
    *ra = u;
    *rb = -1;
  } else if (a.output == GemvOutput::kSwiGlu) {
    *ra = u;
    *rb = a.out_dim + u;
  } else {
    *ra = 2 * u;
    *rb = 2 * u + 1 < a.out_dim ? 2 * u + 1 : -1;
  }
}

template <int kT, bool kNorm, int kRows>
static __global__ void __launch_bounds__(kThreads) GemvKernel(GemvParams p) {
  constexpr int kBatch = kRows == 1 ? 8 : 4;  // 16-byte weight loads per lane in flight per row
  const GemvArgs& a = p.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunks = a.in_dim / 8;
  const int stride = gridDim.x * kWarps;
  const int first = blockIdx.x * kWarps + warp;
  // Weights depend on no earlier kernel: while the previous kernel finishes, load this warp's
  // first batch into registers and ask L2 for the rest of its first rows.
  uint4 va[kBatch], vb[kBatch];
  auto load_batch = [&](const uint4* wa, const uint4* wb, int c0) {
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int c = c0 + 32 * i;
      if (c < chunks) {
        va[i] = LoadStream(wa + c);
        if (kRows == 2) vb[i] = LoadStream(wb + c);
      }
    }
  };
  auto unit_rows = [&](int u, int* ra, int* rb, const uint4** wa, const uint4** wb) {
    UnitRows<kRows>(a, u, ra, rb);
    *wa = reinterpret_cast<const uint4*>(a.w + static_cast<int64_t>(*ra) * a.in_dim);
    *wb = reinterpret_cast<const uint4*>(a.w + static_cast<int64_t>(*rb < 0 ? *ra : *rb) * a.in_dim);
  };
  bool loaded = false;
  if (first < p.units) {
    int ra, rb;
    const uint4 *wa, *wb;
    unit_rows(first, &ra, &rb, &wa, &wb);
    load_batch(wa, wb, lane);
    loaded = true;
    if (chunks > 32 * kBatch && lane < kRows) {
      const int r = lane == 0 ? ra : rb;
      if (r >= 0) PrefetchL2(a.w + static_cast<int64_t>(r) * a.in_dim, a.in_dim * 2);
    }
  }
  GridDependencyWait();
  AllowDependents();

  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kT][in] when kNorm
  if constexpr (kNorm) {
    __shared__ float red[kWarps][kT];
    __shared__ float scale[kT];
    float ss[kT];
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      ss[t] = 0.0f;
      if (t < a.tokens) {
        const int src = a.rows != nullptr ? a.rows[t] : t;
        const float4* row = reinterpret_cast<const float4*>(a.x_f32 + static_cast<int64_t>(src) * a.in_dim);
        for (int c = threadIdx.x; c < a.in_dim / 4; c += kThreads) {
          const float4 v = row[c];
          ss[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
      }
      for (int o = 16; o > 0; o >>= 1) ss[t] += __shfl_xor_sync(0xffffffffu, ss[t], o);
      if (lane == 0) red[warp][t] = ss[t];
    }
    __syncthreads();
    if (threadIdx.x < kT) {
      float total = 0.0f;
      for (int w = 0; w < kWarps; ++w) total += red[w][threadIdx.x];
      scale[threadIdx.x] = rsqrtf(total / static_cast<float>(a.in_dim) + a.eps);
    }
    __syncthreads();
    for (int t = 0; t < a.tokens; ++t) {
      const int src = a.rows != nullptr ? a.rows[t] : t;
      const float* row = a.x_f32 + static_cast<int64_t>(src) * a.in_dim;
      const float sc = scale[t];
      for (int c = threadIdx.x; c < a.in_dim; c += kThreads) {
        const __nv_bfloat16 v = __float2bfloat16(row[c] * sc * a.norm_weight[c]);
        xs[t * a.in_dim + c] = v;
        if (a.normed_out != nullptr && blockIdx.x == 0) a.normed_out[static_cast<int64_t>(t) * a.in_dim + c] = v;
      }
    }
    __syncthreads();
  }

  for (int u = first; u < p.units; u += stride) {
    int ra, rb;
    const uint4 *wa, *wb;
    unit_rows(u, &ra, &rb, &wa, &wb);
    float acc[kRows][kT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < kT; ++t) acc[r][t] = 0.0f;
    for (int c0 = lane; c0 < chunks; c0 += 32 * kBatch) {
      if (!loaded) load_batch(wa, wb, c0);
      loaded = false;
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = c0 + 32 * i;
        if (c < chunks) {
#pragma unroll
          for (int t = 0; t < kT; ++t) {
            if (t < a.tokens) {
              uint4 xv;
              if constexpr (kNorm) {
                xv = *reinterpret_cast<const uint4*>(xs + t * a.in_dim + c * 8);
              } else {
                xv = __ldg(reinterpret_cast<const uint4*>(a.x + static_cast<int64_t>(t) * a.in_dim) + c);
              }
              acc[0][t] += Dot8(va[i], xv);
              if (kRows == 2) acc[kRows - 1][t] += Dot8(vb[i], xv);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < kT; ++t)
        for (int o = 16; o > 0; o >>= 1) acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], o);
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < kT; ++t) {
        if (t >= a.tokens) break;
        if (a.output == GemvOutput::kSwiGlu) {
          const float g = acc[0][t], up = acc[kRows - 1][t];
          a.act[static_cast<int64_t>(t) * a.out_dim + u] = __float2bfloat16(g / (1.0f + __expf(-g)) * up);
          continue;
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int row = r == 0 ? ra : rb;
          if (row < 0) continue;
          float* dst = a.y + static_cast<int64_t>(t) * a.out_dim + row;
          *dst = a.output == GemvOutput::kAccumulate ? *dst + acc[r][t] : acc[r][t];
        }
      }
    }
  }
}

template <int kT, bool kNorm, int kRows>
static void LaunchT(const GemvArgs& a, cudaStream_t stream) {
  GemvParams p{a, 0};
  if (a.output == GemvOutput::kSwiGlu) {
    p.units = a.out_dim;
  } else {
    p.units = kRows == 1 ? a.out_dim : (a.out_dim + 1) / 2;
  }
  const int blocks = std::max(1, std::min((p.units + kWarps - 1) / kWarps, SmCount() * kBlocksPerSm));
  size_t smem = 0;
  if (kNorm) {
    smem = static_cast<size_t>(kT) * a.in_dim * sizeof(__nv_bfloat16);
    if (smem > 48 * 1024) {
      cudaFuncSetAttribute(GemvKernel<kT, kNorm, kRows>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
    }
  }
  LaunchKernel(GemvKernel<kT, kNorm, kRows>, dim3(blocks), dim3(kThreads), smem, stream, p);
}

template <int kT>
static void LaunchForTokens(const GemvArgs& a, cudaStream_t stream) {
  const bool norm = a.x_f32 != nullptr;
  // Row pairs share each x load: worth it once several tokens reuse every weight load.
  if constexpr (kT >= 4) {
    norm ? LaunchT<kT, true, 2>(a, stream) : LaunchT<kT, false, 2>(a, stream);
  } else {
    const bool pair = a.output == GemvOutput::kSwiGlu;
    if (norm) {
      pair ? LaunchT<kT, true, 2>(a, stream) : LaunchT<kT, true, 1>(a, stream);
    } else {
      pair ? LaunchT<kT, false, 2>(a, stream) : LaunchT<kT, false, 1>(a, stream);
    }
  }
}

int GemvMaxTokens() {
  static const int limit = [] {
    const char* v = std::getenv("UM_CUDA_GEMV_MAX_TOKENS");
    return v == nullptr ? kPreferredGemvTokens : std::clamp(std::atoi(v), 0, kMaxGemvTokens);
  }();
  return limit;
}

void LaunchGemv(const GemvArgs& a, cudaStream_t stream) {
  if (a.tokens <= 0) return;
  if (a.tokens == 1) return LaunchForTokens<1>(a, stream);
  if (a.tokens == 2) return LaunchForTokens<2>(a, stream);
  if (a.tokens <= 4) return LaunchForTokens<4>(a, stream);
  if (a.tokens <= 8) return LaunchForTokens<8>(a, stream);
}

void LaunchGemvBf16(const __nv_bfloat16* x, int tokens, const __nv_bfloat16* w, int out_dim,
                    int in_dim, float* y, bool accumulate, cudaStream_t stream) {
  GemvArgs a;
  a.tokens = tokens;
  a.out_dim = out_dim;
  a.in_dim = in_dim;
  a.w = w;
  a.x = x;
  a.output = accumulate ? GemvOutput::kAccumulate : GemvOutput::kStore;
  a.y = y;
  LaunchGemv(a, stream);
}

}  // namespace ultramem::cuda
