// Implementation of memory_score.cuh. Key scores: a tiled product with keys staged through shared
// memory as fp32 (64 key rows × 16 tokens per block, 4 outputs per thread).
#include "compute_node/cuda/memory_score.cuh"

#include <cstdint>

#include "compute_node/cuda/gemv.cuh"
#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static __global__ void QueryNormKernel(const float* q, const float* weight, int tokens, int key_dim,
                                       float eps, float* qn, __nv_bfloat16* parts) {
  GridDependencyWait();
  AllowDependents();
  const int t = blockIdx.x, side = blockIdx.y;
  const float* in = q + (static_cast<int64_t>(t) * 2 + side) * key_dim;
  float sum = 0.0f;
  for (int d = threadIdx.x; d < key_dim; d += blockDim.x) sum += in[d] * in[d];
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int k = 0; k < (blockDim.x + 31) / 32; ++k) total += partial[k];
  const float scale = rsqrtf(total / static_cast<float>(key_dim) + eps);
  float* out = qn + (static_cast<int64_t>(side) * tokens + t) * key_dim;
  for (int d = threadIdx.x; d < key_dim; d += blockDim.x) {
    const float v = in[d] * scale * weight[d];
    out[d] = v;
    if (parts != nullptr) {
      __nv_bfloat16* split = parts + (static_cast<int64_t>(side) * tokens + t) * 3 * key_dim;
      const __nv_bfloat16 hi = __float2bfloat16(v);
      const float r1 = v - __bfloat162float(hi);
      const __nv_bfloat16 mid = __float2bfloat16(r1);
      split[d] = hi;
      split[key_dim + d] = mid;
      split[2 * key_dim + d] = __float2bfloat16(r1 - __bfloat162float(mid));
    }
  }
}

static constexpr int kRows = 64, kToks = 16, kDk = 64, kThreads = 256;

static __global__ void __launch_bounds__(kThreads)
    KeyScoresKernel(const float* qn, const __nv_bfloat16* keys_hat, int tokens, int key_rows,
                    int key_dim, float* scores) {
  GridDependencyWait();
  AllowDependents();
  const int hs = blockIdx.z;  // head·2 + side
  const int side = hs & 1;
  const int row0 = blockIdx.x * kRows, tok0 = blockIdx.y * kToks;
  __shared__ float ks[kRows][kDk + 1];
  __shared__ float qs[kToks][kDk];
  const __nv_bfloat16* keys = keys_hat + static_cast<int64_t>(hs) * key_rows * key_dim;
  const float* q = qn + static_cast<int64_t>(side) * tokens * key_dim;
  const int r = threadIdx.x % kRows, tg = threadIdx.x / kRows;  // 4 token groups of 4
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int d0 = 0; d0 < key_dim; d0 += kDk) {
    for (int e = threadIdx.x; e < kRows * kDk; e += kThreads) {
      const int rr = e / kDk, dd = e % kDk;
      const int row = row0 + rr, d = d0 + dd;
      ks[rr][dd] = (row < key_rows && d < key_dim)
                       ? __bfloat162float(keys[static_cast<int64_t>(row) * key_dim + d])
                       : 0.0f;
    }
    for (int e = threadIdx.x; e < kToks * kDk; e += kThreads) {
      const int tt = e / kDk, dd = e % kDk;
      const int tok = tok0 + tt, d = d0 + dd;
      qs[tt][dd] = (tok < tokens && d < key_dim) ? q[static_cast<int64_t>(tok) * key_dim + d] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int dd = 0; dd < kDk; ++dd) {
      const float k = ks[r][dd];
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] += k * qs[tg * 4 + u][dd];
    }
    __syncthreads();
  }
  const int row = row0 + r;
  if (row >= key_rows) return;
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int tok = tok0 + tg * 4 + u;
    if (tok < tokens) scores[(static_cast<int64_t>(hs) * tokens + tok) * key_rows + row] = acc[u];
  }
}

// Few tokens (decode steps): one warp per key row, 16-byte key loads, the dot products for every
// token at once; the keys are streamed once at close to copy bandwidth.
static constexpr int kSmallTokens = 8, kWarps = 8;

template <int kT>
static __global__ void __launch_bounds__(kWarps * 32)
    KeyScoresSmallKernel(const float* qn, const __nv_bfloat16* keys_hat, int tokens, int key_rows,
                         int key_dim, int total_rows, float* scores) {
  const int lane = threadIdx.x & 31;
  const int grow = blockIdx.x * kWarps + (threadIdx.x >> 5);  // over [H·2][key_rows]
  // The keys are constant: ask L2 for this warp's row while the query kernels finish.
  if (grow < total_rows && lane == 0 && key_dim % 8 == 0) {
    PrefetchL2(keys_hat + static_cast<int64_t>(grow) * key_dim, key_dim * 2);
  }
  GridDependencyWait();
  AllowDependents();
  if (grow >= total_rows) return;
  const int hs = grow / key_rows, row = grow - hs * key_rows;
  const int side = hs & 1;
  const uint4* k = reinterpret_cast<const uint4*>(keys_hat + static_cast<int64_t>(grow) * key_dim);
  const float* q = qn + static_cast<int64_t>(side) * tokens * key_dim;
  float acc[kT];
#pragma unroll
  for (int t = 0; t < kT; ++t) acc[t] = 0.0f;
  for (int c = lane; c < key_dim / 8; c += 32) {
    const uint4 raw = __ldg(k + c);
    const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
    float kf[8];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float2 f = __bfloat1622float2(p[u]);
      kf[2 * u] = f.x;
      kf[2 * u + 1] = f.y;
    }
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      if (t < tokens) {
        const float4* qv = reinterpret_cast<const float4*>(q + static_cast<int64_t>(t) * key_dim + c * 8);
        const float4 a = __ldg(qv), b = __ldg(qv + 1);
        acc[t] += kf[0] * a.x + kf[1] * a.y + kf[2] * a.z + kf[3] * a.w + kf[4] * b.x +
                  kf[5] * b.y + kf[6] * b.z + kf[7] * b.w;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    if (t >= tokens) break;
    float v = acc[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) scores[(static_cast<int64_t>(hs) * tokens + t) * key_rows + row] = v;
  }
}

void LaunchQueryKeyScores(const float* q, const float* weight, float eps, const __nv_bfloat16* keys_hat,
                          int tokens, int heads, int key_rows, int key_dim, float* qn, float* scores,
                          cudaStream_t stream) {
  static const bool staged = EnvInt("UM_CUDA_KEYSCORE_STAGED", 1) != 0;
  if (tokens == 1 && staged) {
    GemvArgs a;
    a.tokens = 1;
    a.out_dim = heads * 2 * key_rows;  // scores [H][2][1][key_rows]: the key rows in order
    a.in_dim = key_dim;
    a.w = keys_hat;
    a.x_f32 = q;  // [2·Dk]: the row half, then the column half
    a.norm_weight = weight;
    a.eps = eps;
    a.fp32_input = true;
    a.x_group_rows = key_rows;
    a.y = scores;
    if (LaunchGemvStaged(a, stream)) return;
  }
  LaunchQueryNorm(q, weight, tokens, key_dim, eps, qn, stream);
  LaunchKeyScores(qn, keys_hat, tokens, heads, key_rows, key_dim, scores, stream);
}

void LaunchQueryNorm(const float* q, const float* weight, int tokens, int key_dim, float eps,
                     float* qn, cudaStream_t stream, __nv_bfloat16* parts) {
  if (tokens == 0) return;
  LaunchKernel(QueryNormKernel, dim3(tokens, 2), dim3(128), 0, stream, q, weight, tokens, key_dim, eps, qn, parts);
}

void LaunchKeyScores(const float* qn, const __nv_bfloat16* keys_hat, int tokens, int heads,
                     int key_rows, int key_dim, float* scores, cudaStream_t stream) {
  if (tokens == 0) return;
  if (tokens <= kSmallTokens && key_dim % 8 == 0) {
    const int total = heads * 2 * key_rows;
    LaunchKernel(KeyScoresSmallKernel<kSmallTokens>, dim3((total + kWarps - 1) / kWarps),
                 dim3(kWarps * 32), 0, stream, qn, keys_hat, tokens, key_rows, key_dim, total, scores);
    return;
  }
  const dim3 grid((key_rows + kRows - 1) / kRows, (tokens + kToks - 1) / kToks, heads * 2);
  LaunchKernel(KeyScoresKernel, grid, dim3(kThreads), 0, stream, qn, keys_hat, tokens, key_rows, key_dim, scores);
}

}  // namespace ultramem::cuda
