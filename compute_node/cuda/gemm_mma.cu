// Implementation of gemm_mma.cuh.
#include "compute_node/cuda/gemm_mma.cuh"

#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>

#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/skinny_ops.cuh"

namespace ultramem::cuda {

static constexpr int kWarps = 8;
static constexpr int kThreads = kWarps * 32;
static constexpr int kRows = 16;   // weight rows per block (per matrix half for SwiGLU)

// Lane (g = lane / 4, q = lane % 4) holds, for a 32-wide K step at k0, the 16 bytes of rows g and
// g + 8 at k0 + 8q .. +8 (wg, wg8) and of token rows j·8 + g at the same K (xv). Two mma steps
// cover them: step s uses the pairs (k0 + 8q + 4s + {0,1}) as logical columns 2q + {0,1} and
// (k0 + 8q + 4s + {2,3}) as 2q + 8 + {0,1}, in A and B alike.
template <int kNT, bool kSwiGlu>
static __global__ void __launch_bounds__(kThreads) GemmMmaKernel(GemvArgs a) {
  constexpr int kMats = kSwiGlu ? 2 : 1;
  // 32-wide K steps loaded ahead per warp (fewer when the accumulators need the registers).
  constexpr int kUnroll = kMats * kNT >= 16 ? 2 : 4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int tile_row = blockIdx.x * kRows;
  const int steps = a.in_dim / 32;
  // This lane's weight rows (matrix m: gate/plain 0, up 1), clamped in range (masked at the end).
  const uint4* wrow[kMats][2];
#pragma unroll
  for (int m = 0; m < kMats; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int r = tile_row + g + 8 * h;
      r = r < a.out_dim ? r : a.out_dim - 1;
      if (m == 1) r += a.out_dim;
      wrow[m][h] = reinterpret_cast<const uint4*>(a.w + static_cast<int64_t>(r) * a.in_dim) + q;
    }
  }
  uint4 wv[kUnroll][kMats][2];
  auto load_w = [&](int s0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = s0 + u * kWarps;
      if (s < steps) {
#pragma unroll
        for (int m = 0; m < kMats; ++m)
#pragma unroll
          for (int h = 0; h < 2; ++h) wv[u][m][h] = LoadStream(wrow[m][h] + s * 4);
      }
    }
  };
  // Weights depend on no earlier kernel: the first batch is in flight before the wait.
  load_w(warp);
  GridDependencyWait();
  AllowDependents();

  float acc[kMats][kNT][4];
#pragma unroll
  for (int m = 0; m < kMats; ++m)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][j][i] = 0.0f;
  const uint4* xbase = reinterpret_cast<const uint4*>(a.x) + q;
  const int x_stride = a.in_dim / 8;  // uint4 per token row
  for (int s0 = warp; s0 < steps; s0 += kUnroll * kWarps) {
    if (s0 != warp) load_w(s0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = s0 + u * kWarps;
      if (s >= steps) break;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int token = j * 8 + g;
        const uint4 xv = token < a.tokens ? __ldg(xbase + static_cast<int64_t>(token) * x_stride + s * 4)
                                          : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int m = 0; m < kMats; ++m) {
          const uint4& w0 = wv[u][m][0];
          const uint4& w8 = wv[u][m][1];
          MmaBf16(acc[m][j], w0.x, w8.x, w0.y, w8.y, xv.x, xv.y);
          MmaBf16(acc[m][j], w0.z, w8.z, w0.w, w8.w, xv.z, xv.w);
        }
      }
    }
  }

  // Partial sums of the 8 warps: [warp][m][row 16][token kNT·8].
  extern __shared__ float red[];
  constexpr int kCols = kNT * 8;
#pragma unroll
  for (int m = 0; m < kMats; ++m)
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      float* base = red + ((warp * kMats + m) * kRows) * kCols;
      const int col = j * 8 + 2 * q;
      base[g * kCols + col] = acc[m][j][0];
      base[g * kCols + col + 1] = acc[m][j][1];
      base[(g + 8) * kCols + col] = acc[m][j][2];
      base[(g + 8) * kCols + col + 1] = acc[m][j][3];
    }
  __syncthreads();
  for (int e = threadIdx.x; e < kRows * kCols; e += kThreads) {
    const int r = e / kCols, n = e - r * kCols;
    const int row = tile_row + r;
    if (n >= a.tokens || row >= a.out_dim) continue;
    float sum[kMats];
#pragma unroll
    for (int m = 0; m < kMats; ++m) {
      sum[m] = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum[m] += red[((w * kMats + m) * kRows + r) * kCols + n];
    }
    const int64_t at = static_cast<int64_t>(n) * a.out_dim + row;
    if constexpr (kSwiGlu) {
      const float gt = sum[0];
      a.act[at] = __float2bfloat16(gt / (1.0f + __expf(-gt)) * sum[kMats - 1]);
    } else {
      a.y[at] = a.output == GemvOutput::kAccumulate ? a.y[at] + sum[0] : sum[0];
    }
  }
}

template <int kNT>
static void LaunchNT(const GemvArgs& a, cudaStream_t stream) {
  const int blocks = (a.out_dim + kRows - 1) / kRows;
  const bool swiglu = a.output == GemvOutput::kSwiGlu;
  const size_t smem = sizeof(float) * kWarps * (swiglu ? 2 : 1) * kRows * kNT * 8;
  if (swiglu) {
    LaunchKernel(GemmMmaKernel<kNT, true>, dim3(blocks), dim3(kThreads), smem, stream, a);
  } else {
    LaunchKernel(GemmMmaKernel<kNT, false>, dim3(blocks), dim3(kThreads), smem, stream, a);
  }
}

bool GemmMmaEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("UM_CUDA_MMA");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

void LaunchGemmMma(const GemvArgs& a, cudaStream_t stream) {
  if (a.tokens <= 0) return;
  if (a.tokens <= 16) return LaunchNT<2>(a, stream);
  if (a.tokens <= 32) return LaunchNT<4>(a, stream);
  if (a.tokens <= 64) return LaunchNT<8>(a, stream);
}

}  // namespace ultramem::cuda
