// Implementation of attention.cuh. LaunchAttention tries, in order: the cluster kernel for small
// decode steps (attention_cluster.cu), the staged tensor-core kernel for wide ones
// (attention_staged.cu), then the fast kernel here (head_dim 32/64/128, group 1/2/4/8: one
// AttentionItem, attention_item.cuh, per block of 128 threads, (token, kv head, split) from the
// grid), which also serves prefill. The generic kernels below cover every other shape (kernel 1
// the same tiling with scalar V reads, kernel 2 the merge).
#include "compute_node/cuda/attention.cuh"

#include <algorithm>
#include <cmath>

#include "compute_node/cuda/attention_item.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/rope.cuh"

namespace ultramem::cuda {

static constexpr int kThreads = 128;
static constexpr int kMaxOwned = kMaxAttentionGroup * kMaxHeadDim / kThreads;

static __global__ void __launch_bounds__(kThreads)
    AttentionGenericKernel(const float* qkv, const TokenKv* kv, int num_heads, int num_kv_heads,
                    int head_dim, int layer, int splits, float* scratch, __nv_bfloat16* out) {
  GridDependencyWait();
  AllowDependents();
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int group = num_heads / num_kv_heads;
  const int width = num_kv_heads * head_dim;
  const TokenKv tok = kv[t];
  const int ctx = tok.position + 1;
  const int chunk = (ctx + splits - 1) / splits;
  const int p0 = split * chunk;
  const int p1 = min(ctx, p0 + chunk);

  extern __shared__ float smem[];
  float* qs = smem;                          // [group][hd], pre-scaled
  float* sc = qs + group * head_dim;         // [group][kThreads]
  float* m_run = sc + group * kThreads;      // [group]
  float* l_run = m_run + group;              // [group]
  float* rescale = l_run + group;            // [group]

  const float scale = rsqrtf(static_cast<float>(head_dim));
  const float* qrow = qkv + static_cast<int64_t>(t) * (num_heads + 2 * num_kv_heads) * head_dim +
                      static_cast<int64_t>(kvh) * group * head_dim;
  for (int e = threadIdx.x; e < group * head_dim; e += kThreads) qs[e] = qrow[e] * scale;
  if (threadIdx.x < group) {
    m_run[threadIdx.x] = -INFINITY;
    l_run[threadIdx.x] = 0.0f;
  }
  float acc[kMaxOwned];
#pragma unroll
  for (int k = 0; k < kMaxOwned; ++k) acc[k] = 0.0f;
  __syncthreads();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const __nv_bfloat16* kbase = KvRow(tok, layer, 0, 0, width) + kvh * head_dim;
  const __nv_bfloat16* vbase = KvRow(tok, layer, 1, 0, width) + kvh * head_dim;
  for (int tile = p0; tile < p1; tile += kThreads) {
    const int p = tile + threadIdx.x;
    // Scores of this thread's position for every query head of the group.
    if (p < p1) {
      float s[kMaxAttentionGroup];
#pragma unroll
      for (int g = 0; g < kMaxAttentionGroup; ++g) s[g] = 0.0f;
      const uint4* krow = reinterpret_cast<const uint4*>(kbase + static_cast<int64_t>(p) * width);
      for (int d8 = 0; d8 < head_dim / 8; ++d8) {
        const uint4 raw = krow[d8];
        const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
        float kf[8];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float2 f = __bfloat1622float2(pairs[u]);
          kf[2 * u] = f.x;
          kf[2 * u + 1] = f.y;
        }
#pragma unroll
        for (int g = 0; g < kMaxAttentionGroup; ++g) {
          if (g < group) {
            const float* qg = qs + g * head_dim + d8 * 8;
#pragma unroll
            for (int u = 0; u < 8; ++u) s[g] += qg[u] * kf[u];
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kMaxAttentionGroup; ++g) {
        if (g < group) sc[g * kThreads + threadIdx.x] = s[g];
      }
    } else {
      for (int g = 0; g < group; ++g) sc[g * kThreads + threadIdx.x] = -INFINITY;
    }
    __syncthreads();
    // Online softmax: warp w updates heads w, w+4, ...
    for (int g = warp; g < group; g += kThreads / 32) {
      const SoftmaxTile st = WarpSoftmaxTile<kThreads>(sc + g * kThreads, m_run[g], lane);
      if (lane == 0) FoldSoftmaxTile(st, m_run[g], l_run[g], rescale[g]);
    }
    __syncthreads();
    const int n = min(kThreads, p1 - tile);
#pragma unroll
    for (int k = 0; k < kMaxOwned; ++k) {
      const int e = threadIdx.x + k * kThreads;
      if (e < group * head_dim) {
        const int g = e / head_dim, d = e - g * head_dim;
        const float* pg = sc + g * kThreads;
        const __nv_bfloat16* v = vbase + static_cast<int64_t>(tile) * width + d;
        float a = acc[k] * rescale[g];
        for (int j = 0; j < n; ++j) a += pg[j] * __bfloat162float(v[static_cast<int64_t>(j) * width]);
        acc[k] = a;
      }
    }
    __syncthreads();
  }

  const int head0 = kvh * group;
  if (splits == 1) {
#pragma unroll
    for (int k = 0; k < kMaxOwned; ++k) {
      const int e = threadIdx.x + k * kThreads;
      if (e < group * head_dim) {
        const int g = e / head_dim, d = e - g * head_dim;
        out[(static_cast<int64_t>(t) * num_heads + head0 + g) * head_dim + d] =
            __float2bfloat16(acc[k] / l_run[g]);
      }
    }
    return;
  }
  // Partial: [t][head][split][hd + 2] = acc (unnormalized), m, l.
#pragma unroll
  for (int k = 0; k < kMaxOwned; ++k) {
    const int e = threadIdx.x + k * kThreads;
    if (e < group * head_dim) {
      const int g = e / head_dim, d = e - g * head_dim;
      float* part = scratch + ((static_cast<int64_t>(t) * num_heads + head0 + g) * splits + split) *
                                  (head_dim + 2);
      part[d] = acc[k];
      if (d == 0) {
        part[head_dim] = m_run[g];
        part[head_dim + 1] = l_run[g];
      }
    }
  }
}

static __global__ void CombineGenericKernel(const float* scratch, int num_heads, int head_dim, int splits,
                                     __nv_bfloat16* out) {
  GridDependencyWait();
  AllowDependents();
  const int t = blockIdx.x, head = blockIdx.y;
  const float* parts = scratch + (static_cast<int64_t>(t) * num_heads + head) * splits * (head_dim + 2);
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, parts[s * (head_dim + 2) + head_dim]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float l = 0.0f, a = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* p = parts + s * (head_dim + 2);
      const float ms = p[head_dim];
      if (ms == -INFINITY) continue;  // an empty split
      const float w = __expf(ms - m);
      l += p[head_dim + 1] * w;
      a += p[d] * w;
    }
    out[(static_cast<int64_t>(t) * num_heads + head) * head_dim + d] = __float2bfloat16(a / l);
  }
}

int AttentionSplits(int tokens, int num_kv_heads, int sm_count, int max_positions) {
  static const int waves = std::max(1, EnvInt("UM_CUDA_ATTN_WAVES", 2));  // a measuring knob
  const int blocks = std::max(1, tokens * num_kv_heads);
  int splits = std::max(1, (waves * sm_count + blocks - 1) / blocks);
  splits = std::min(splits, 32);
  // Each split should keep at least a full tile of positions at the longest context.
  splits = std::min(splits, std::max(1, max_positions / kThreads));
  return splits;
}

// ---- the fast kernel: one AttentionItem (attention_item.cuh) per block ----

struct PdlWait {
  __device__ void operator()() const {
    GridDependencyWait();
    AllowDependents();
  }
};

template <int kHD, int kG>
static __global__ void __launch_bounds__(kFastThreads)
    AttentionFastKernel(AttentionItemArgs args) {
  __shared__ AttentionItemSmem<kHD, kG> sm;
  AttentionItem<kHD, kG>(sm, args, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, BlockSync{},
                         PdlWait{});
}

void LaunchAttention(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                     int num_kv_heads, int head_dim, int layer, int splits, float* scratch,
                     int* counters, __nv_bfloat16* out, cudaStream_t stream) {
  if (tokens == 0) return;
  if (LaunchAttentionCluster(qkv, kv, rope, tokens, num_heads, num_kv_heads, head_dim, layer, out, stream)) return;
  if (LaunchAttentionStaged(qkv, kv, rope, tokens, num_heads, num_kv_heads, head_dim, layer, splits, scratch,
                            counters, out, stream)) {
    return;
  }
  const int group = num_heads / num_kv_heads;
  const AttentionItemArgs args{qkv, kv, rope, num_heads, num_kv_heads, layer, splits, scratch, counters, out};
  if (DispatchHeadDimAndGroup<32, 64, 128>(head_dim, group, [&](auto hd, auto g) {
        LaunchKernel(AttentionFastKernel<decltype(hd)::value, decltype(g)::value>, dim3(tokens, num_kv_heads, splits),
                     dim3(kFastThreads), 0, stream, args);
      })) {
    return;
  }
  if (rope != nullptr) {
    LaunchRopeAndCache(qkv, kv, rope, tokens, num_heads, num_kv_heads, head_dim, layer, stream);
  }
  const size_t smem = sizeof(float) * (group * head_dim + group * kThreads + 3 * group);
  LaunchKernel(AttentionGenericKernel, dim3(tokens, num_kv_heads, splits), dim3(kThreads), smem,
               stream, qkv, kv, num_heads, num_kv_heads, head_dim, layer, splits, scratch, out);
  if (splits > 1) {
    LaunchKernel(CombineGenericKernel, dim3(tokens, num_heads), dim3(std::min(head_dim, 128)), 0,
                 stream, scratch, num_heads, head_dim, splits, out);
  }
}

}  // namespace ultramem::cuda
