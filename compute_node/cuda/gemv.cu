// Implementation of gemv.cuh.
#include "compute_node/cuda/gemv.cuh"

#include <algorithm>

#include "compute_node/cuda/bulk_copy.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/skinny_ops.cuh"

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

// ---- The staged GEMV: one token, each block's whole weight slice in shared memory. ----
//
// One block per multiprocessor (at most) owns a contiguous run of output units; the lanes of its
// first warp start bulk copies of those weight rows into shared memory and the block lets the
// next kernel of the stream launch, both before waiting on the previous kernel. So the weights of the next
// few products stream in while earlier kernels still run (each block holds a slice of at most
// kStagedMaxWeightBytes, so several such kernels fit on a multiprocessor at once), and after its
// wait a block only reads x (and the residual it adds to) from L2.
static constexpr int kStagedWarps = 8;
static constexpr int kStagedThreads = kStagedWarps * 32;
static constexpr int kStagedMaxWeightBytes = 96 * 1024;
static constexpr int kStagedMaxF4 = 4;  // in_dim <= kStagedThreads * 4 * kStagedMaxF4 with a norm
static constexpr int kStagedHeader = 128;
// The tensor-core compute (below): at most this many 8-row tiles of weight rows a block.
static constexpr int kStagedMaxTiles = 6;

struct StagedParams {
  GemvArgs a;
  int per_block;  // output units (rows, or SwiGLU columns of two rows) of each block; the last may have fewer
  int pitch;      // elements between weight rows in shared memory (in_dim + 32: see StagedPitch)
  bool trace;     // block 0 records its timeline (GemvTraceEnabled)
};

// The staged GEMV's trace (block 0 of each launch): a ring of records, the next slot's counter.
constexpr int kTraceSlots = 1024;
__device__ GemvTraceRecord g_gemv_trace[kTraceSlots];
__device__ unsigned int g_gemv_trace_next;

__device__ __forceinline__ unsigned long long GlobalTimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ bool MbarTestWait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(SmemAddr(bar)), "r"(parity)
      : "memory");
  return done != 0;
}

// x in shared memory: bf16, or fp32 (GemvArgs::fp32_input).
static __host__ __device__ int StagedXsBytes(int in_dim, bool f32) { return (in_dim * (f32 ? 4 : 2) + 127) / 128 * 128; }
// Weight rows sit 64 bytes further apart in shared memory than in global: the tensor-core compute
// reads 16 bytes at the same column of 8 rows at once (lanes g = 0..7), and a pitch of 64 modulo
// 128 bytes puts each quarter-warp's two rows on disjoint banks.
static __host__ __device__ int StagedPitch(int in_dim) { return in_dim + 32; }

// The block's products y[i] = W[i]·x for its `rows` staged weight rows (ws, `pitch` apart) on the
// tensor cores: mma.sync m16n8k16 with the weight rows as B's 8 columns (a tile of 8 rows) and x
// as every row of A (so each lane's C holds the product; row 0's is used). The 16-element K of
// one mma is not contiguous: lane (g = lane / 4, q = lane % 4) loads 16 bytes at columns 8q..8q+7
// of a 32-column chunk, for x and for weight row g of each tile, and two mmas take the halves —
// the same permutation of K in A and B, so the sums are the products. The chunks are dealt round
// robin to the warps, whose partial sums meet in `red` [kStagedWarps][kStagedMaxTiles * 8].
static __device__ __forceinline__ void StagedMmaProducts(const __nv_bfloat16* xs, const __nv_bfloat16* ws,
                                                         int pitch, int in_dim, int rows, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int tiles = (rows + 7) / 8;
  float acc[kStagedMaxTiles][4];
#pragma unroll
  for (int t = 0; t < kStagedMaxTiles; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
  }
  const uint32_t x_at = SmemAddr(xs + 8 * q), w_at = SmemAddr(ws + 8 * q);
  for (int c = warp; c < in_dim / 32; c += kStagedWarps) {
    const uint4 xv = LoadShared16At(x_at + 64 * c);
#pragma unroll
    for (int t = 0; t < kStagedMaxTiles; ++t) {
      if (t < tiles) {
        // Rows past the block's last repeat it (their sums are not read).
        const int r = min(8 * t + g, rows - 1);
        const uint4 wv = LoadShared16At(w_at + 2 * (r * pitch + 32 * c));
        MmaBf16(acc[t], xv.x, xv.x, xv.y, xv.y, wv.x, wv.y);
        MmaBf16(acc[t], xv.z, xv.z, xv.w, xv.w, wv.z, wv.w);
      }
    }
  }
  if (g == 0) {
#pragma unroll
    for (int t = 0; t < kStagedMaxTiles; ++t) {
      if (t < tiles) {
        red[warp * kStagedMaxTiles * 8 + 8 * t + 2 * q] = acc[t][0];
        red[warp * kStagedMaxTiles * 8 + 8 * t + 2 * q + 1] = acc[t][1];
      }
    }
  }
  __syncthreads();
}

// Whether the tensor-core compute takes these products (else a warp per output unit).
static bool StagedMmaFits(const GemvArgs& a, int per_block) {
  // 0: off, 1: every product, 2: the gate/up (SwiGLU) products only.
  static const int mode = EnvInt("UM_CUDA_GEMV_MMA", 2);
  const bool swiglu = a.output == GemvOutput::kSwiGlu;
  const int rows = per_block * (swiglu ? 2 : 1);
  return (mode == 1 || (mode == 2 && swiglu)) && a.in_dim % 32 == 0 && rows <= 8 * kStagedMaxTiles;
}

// The tensor-core variant is held to 64 registers a thread (four blocks a multiprocessor, as the
// CUDA-core variants' 48-70 allow), so that the kernels launched early after it still fit beside
// it; left alone it took 126.
template <bool kNorm, bool kSwiGlu, bool kMma, bool kXF32 = false>
static __global__ void __launch_bounds__(kStagedThreads, kMma ? 4 : 0) GemvStagedKernel(StagedParams p) {
  static_assert(!kXF32 || (kNorm && !kSwiGlu && !kMma), "fp32 x: normalized rows, plain products");
  const GemvArgs& a = p.a;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem_raw);
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw + kStagedHeader);
  float* xsf = reinterpret_cast<float*>(smem_raw + kStagedHeader);  // kXF32
  __nv_bfloat16* ws = reinterpret_cast<__nv_bfloat16*>(smem_raw + kStagedHeader + StagedXsBytes(a.in_dim, kXF32));
  __shared__ float red[kMma ? kStagedWarps * kStagedMaxTiles * 8 : kStagedWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int u0 = blockIdx.x * p.per_block;
  const int n = min(p.per_block, a.out_dim - u0);
  const bool trace = p.trace && blockIdx.x == 0 && threadIdx.x == 0;
  unsigned long long t_start = 0, c_start = 0, c_wait = 0, c_ready = 0;
  bool ready_at_wait = false;
  if (trace) {
    t_start = GlobalTimer();
    c_start = clock64();
  }
  if (warp == 0) {
    // Lane 0 arms the barrier with every byte; then the warp's lanes issue one bulk copy per
    // weight row (row by row: one copy of the whole slice keeps too few bytes in flight).
    const uint32_t row_bytes = static_cast<uint32_t>(a.in_dim) * 2;
    const int rows = kSwiGlu ? 2 * n : n;
    if (lane == 0) {
      MbarInit(bar, 1);
      MbarInitFence();
      MbarExpectTx(bar, rows * row_bytes);
    }
    __syncwarp();
    for (int r = lane; r < rows; r += 32) {
      const int src = kSwiGlu && r >= n ? a.out_dim + u0 + (r - n) : u0 + r;
      BulkLoad(ws + static_cast<int64_t>(r) * p.pitch, a.w + static_cast<int64_t>(src) * a.in_dim, row_bytes, bar);
    }
  }
  // The norm's weights are weights too: into registers before the wait.
  float4 nw[kStagedMaxF4];
  const int f4s = a.in_dim / 4;
  if constexpr (kNorm) {
#pragma unroll
    for (int i = 0; i < kStagedMaxF4; ++i) {
      const int c = threadIdx.x + i * kStagedThreads;
      if (c < f4s) nw[i] = __ldg(reinterpret_cast<const float4*>(a.norm_weight) + c);
    }
  }
  AllowDependents();
  GridDependencyWait();
  if (trace) {
    c_wait = clock64();
    ready_at_wait = MbarTestWait(bar, 0);
  }

  // After the wait: the residual the block's rows add to (kMma: thread i holds row i; else lane j
  // of a warp holds row warp + 8j), and x.
  float prev = 0.0f;
  if (a.output == GemvOutput::kAccumulate) {
    const int i = kMma ? static_cast<int>(threadIdx.x) : warp + kStagedWarps * lane;
    if (i < n) prev = __ldcg(a.y + u0 + i);
  }
  if constexpr (kNorm) {
    // Written by earlier kernels, some of which may share this multiprocessor's L1: read via L2.
    const int src = a.rows != nullptr ? __ldcg(a.rows) : 0;
    const int half = a.x_group_rows > 0 ? (u0 / a.x_group_rows) & 1 : 0;
    const float4* row = reinterpret_cast<const float4*>(a.x_f32 + static_cast<int64_t>(src + half) * a.in_dim);
    float4 v[kStagedMaxF4];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < kStagedMaxF4; ++i) {
      const int c = threadIdx.x + i * kStagedThreads;
      if (c < f4s) {
        v[i] = __ldcg(row + c);
        ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
      }
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kStagedWarps; ++w) total += red[w];
    const float scale = rsqrtf(total / static_cast<float>(a.in_dim) + a.eps);
#pragma unroll
    for (int i = 0; i < kStagedMaxF4; ++i) {
      const int c = threadIdx.x + i * kStagedThreads;
      if (kXF32 && c < f4s) {
        reinterpret_cast<float4*>(xsf)[c] = make_float4(v[i].x * scale * nw[i].x, v[i].y * scale * nw[i].y,
                                                        v[i].z * scale * nw[i].z, v[i].w * scale * nw[i].w);
      } else if (c < f4s) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(v[i].x * scale * nw[i].x, v[i].y * scale * nw[i].y);
        __nv_bfloat162 hi = __floats2bfloat162_rn(v[i].z * scale * nw[i].z, v[i].w * scale * nw[i].w);
        reinterpret_cast<__nv_bfloat162*>(xs)[2 * c] = lo;
        reinterpret_cast<__nv_bfloat162*>(xs)[2 * c + 1] = hi;
        if (a.normed_out != nullptr && blockIdx.x == 0) {
          reinterpret_cast<__nv_bfloat162*>(a.normed_out)[2 * c] = lo;
          reinterpret_cast<__nv_bfloat162*>(a.normed_out)[2 * c + 1] = hi;
        }
      }
    }
  } else {
    for (int c = threadIdx.x; c < a.in_dim / 8; c += kStagedThreads) {
      reinterpret_cast<uint4*>(xs)[c] = __ldcg(reinterpret_cast<const uint4*>(a.x) + c);
    }
  }
  __syncthreads();
  MbarWait(bar, 0);
  if (trace) c_ready = clock64();

  if constexpr (kMma) {
    StagedMmaProducts(xs, ws, p.pitch, a.in_dim, kSwiGlu ? 2 * n : n, red);
    const int i = threadIdx.x;
    if (i < n) {
      float acc_a = 0.0f, acc_b = 0.0f;
#pragma unroll
      for (int w = 0; w < kStagedWarps; ++w) {
        acc_a += red[w * kStagedMaxTiles * 8 + i];
        if (kSwiGlu) acc_b += red[w * kStagedMaxTiles * 8 + n + i];
      }
      if (kSwiGlu) {
        a.act[u0 + i] = __float2bfloat16(acc_a / (1.0f + __expf(-acc_a)) * acc_b);
      } else {
        a.y[u0 + i] = a.output == GemvOutput::kAccumulate ? prev + acc_a : acc_a;
      }
    }
  }
  const int chunks = a.in_dim / 8;
  const uint4* x4 = reinterpret_cast<const uint4*>(xs);
  for (int i = warp, k = 0; !kMma && i < n; i += kStagedWarps, ++k) {
    const uint4* wa = reinterpret_cast<const uint4*>(ws + static_cast<int64_t>(i) * p.pitch);
    const uint4* wb = reinterpret_cast<const uint4*>(ws + static_cast<int64_t>(n + i) * p.pitch);
    float acc_a = 0.0f, acc_b = 0.0f;
#pragma unroll 4
    for (int c = lane; c < chunks; c += 32) {
      if constexpr (kXF32) {
        const uint4 xa = LoadShared16(xsf + 8 * c), xb = LoadShared16(xsf + 8 * c + 4);
        acc_a += Dot8F32(LoadShared16(wa + c), reinterpret_cast<const float4&>(xa), reinterpret_cast<const float4&>(xb));
      } else {
        const uint4 xv = LoadShared16(x4 + c);
        acc_a += Dot8(LoadShared16(wa + c), xv);
        if (kSwiGlu) acc_b += Dot8(LoadShared16(wb + c), xv);
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      acc_a += __shfl_xor_sync(0xffffffffu, acc_a, o);
      if (kSwiGlu) acc_b += __shfl_xor_sync(0xffffffffu, acc_b, o);
    }
    const float old = __shfl_sync(0xffffffffu, prev, k);
    if (lane == 0) {
      const int u = u0 + i;
      if (kSwiGlu) {
        a.act[u] = __float2bfloat16(acc_a / (1.0f + __expf(-acc_a)) * acc_b);
      } else {
        a.y[u] = a.output == GemvOutput::kAccumulate ? old + acc_a : acc_a;
      }
    }
  }
  if (p.trace && blockIdx.x == 0) {
    __syncthreads();  // the block's outputs are written
    if (threadIdx.x == 0) {
      GemvTraceRecord r;
      r.out_dim = a.out_dim;
      r.in_dim = a.in_dim;
      r.start_ns = t_start;
      r.end_ns = GlobalTimer();
      r.wait_cycles = c_wait - c_start;
      r.ready_cycles = c_ready - c_wait;
      r.end_cycles = clock64() - c_ready;
      r.ready_at_wait = ready_at_wait;
      g_gemv_trace[atomicAdd(&g_gemv_trace_next, 1u) % kTraceSlots] = r;
    }
  }
}

// Units per block and blocks for the staged GEMV, or false when a block's slice would not fit.
static bool StagedShape(const GemvArgs& a, StagedParams* p, int* blocks, size_t* smem) {
  if (a.tokens != 1 || a.in_dim % 8 != 0) return false;
  if (a.x_f32 != nullptr && a.in_dim > kStagedThreads * 4 * kStagedMaxF4) return false;
  const bool swiglu = a.output == GemvOutput::kSwiGlu;
  if (a.fp32_input && (a.x_f32 == nullptr || swiglu)) return false;
  p->a = a;
  p->per_block = (a.out_dim + SmCount() - 1) / SmCount();
  if (a.x_group_rows > 0) {
    // A block's rows all read one half of x: its share, rounded up to a divisor of the group.
    if (a.x_f32 == nullptr) return false;
    while (a.x_group_rows % p->per_block != 0) ++p->per_block;
  }
  // Lane j of a warp holds the residual of its j-th row: at most 32 rows a warp.
  if (p->per_block > 32 * kStagedWarps) return false;
  p->pitch = StagedPitch(a.in_dim);
  const int64_t weight_bytes = static_cast<int64_t>(p->per_block) * (swiglu ? 2 : 1) * p->pitch * 2;
  if (weight_bytes > kStagedMaxWeightBytes) return false;
  *blocks = (a.out_dim + p->per_block - 1) / p->per_block;
  *smem = kStagedHeader + StagedXsBytes(a.in_dim, a.fp32_input) + static_cast<size_t>(weight_bytes);
  return true;
}

template <bool kNorm, bool kSwiGlu, bool kMma, bool kXF32 = false>
static void LaunchStaged(const StagedParams& p, int blocks, size_t smem, cudaStream_t stream) {
  LaunchKernel(GemvStagedKernel<kNorm, kSwiGlu, kMma, kXF32>, dim3(blocks), dim3(kStagedThreads), smem, stream, p);
}

template <bool kNorm, bool kSwiGlu>
static void LaunchStaged(const StagedParams& p, int blocks, size_t smem, cudaStream_t stream) {
  StagedMmaFits(p.a, p.per_block) ? LaunchStaged<kNorm, kSwiGlu, true>(p, blocks, smem, stream)
                                  : LaunchStaged<kNorm, kSwiGlu, false>(p, blocks, smem, stream);
}

bool GemvTraceEnabled() {
  static const bool enabled = EnvInt("UM_CUDA_GEMV_TRACE", 0) != 0;
  return enabled;
}

std::vector<GemvTraceRecord> TakeGemvTrace() { return TakeTraceRing(g_gemv_trace, g_gemv_trace_next); }

// False when the environment sets UM_CUDA_GEMV_STAGED=0 (read once).
static bool GemvStagedEnabled() {
  static const bool enabled = EnvInt("UM_CUDA_GEMV_STAGED", 1) != 0;
  return enabled;
}

static bool TryLaunchStaged(const GemvArgs& a, cudaStream_t stream) {
  if (!a.staged || !GemvStagedEnabled()) return false;
  StagedParams p;
  int blocks = 0;
  size_t smem = 0;
  if (!StagedShape(a, &p, &blocks, &smem)) return false;
  p.trace = GemvTraceEnabled();
  const bool norm = a.x_f32 != nullptr, swiglu = a.output == GemvOutput::kSwiGlu;
  if (a.fp32_input) {
    LaunchStaged<true, false, false, true>(p, blocks, smem, stream);
  } else if (norm) {
    swiglu ? LaunchStaged<true, true>(p, blocks, smem, stream) : LaunchStaged<true, false>(p, blocks, smem, stream);
  } else {
    swiglu ? LaunchStaged<false, true>(p, blocks, smem, stream) : LaunchStaged<false, false>(p, blocks, smem, stream);
  }
  return true;
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
  if (kNorm) smem = static_cast<size_t>(kT) * a.in_dim * sizeof(__nv_bfloat16);
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
  static const int limit = std::clamp(EnvInt("UM_CUDA_GEMV_MAX_TOKENS", kPreferredGemvTokens), 0, kMaxGemvTokens);
  return limit;
}

bool LaunchGemvStaged(const GemvArgs& a, cudaStream_t stream) {
  return a.tokens == 1 && TryLaunchStaged(a, stream);
}

void LaunchGemv(const GemvArgs& a, cudaStream_t stream) {
  if (a.tokens <= 0) return;
  if (a.tokens == 1) {
    if (TryLaunchStaged(a, stream)) return;
    return LaunchForTokens<1>(a, stream);
  }
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
