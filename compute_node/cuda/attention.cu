// Implementation of attention.cuh. The fast kernel (head_dim 32/64/128, group 1/2/4/8) runs one
// AttentionItem (attention_item.cuh) per block of 128 threads, (token, kv head, split) from the
// grid. The generic kernels below cover every other shape (kernel 1 the same tiling with scalar V
// reads, kernel 2 the merge).
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
      float* sg = sc + g * kThreads;
      float mx = -INFINITY;
      for (int j = lane; j < kThreads; j += 32) mx = fmaxf(mx, sg[j]);
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m_run[g], mx);
      float sum = 0.0f;
      for (int j = lane; j < kThreads; j += 32) {
        const float e = __expf(sg[j] - m_new);
        sg[j] = e;
        sum += e;
      }
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        const float r = __expf(m_run[g] - m_new);
        rescale[g] = r;
        l_run[g] = l_run[g] * r + sum;
        m_run[g] = m_new;
      }
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
  const int blocks = std::max(1, tokens * num_kv_heads);
  int splits = std::max(1, (2 * sm_count + blocks - 1) / blocks);
  splits = std::min(splits, 32);
  // Each split should keep at least a full tile of positions at the longest context.
  splits = std::min(splits, std::max(1, max_positions / kThreads));
  return splits;
}

// ---- the fast kernel: one AttentionItem (attention_item.cuh) per block ----

struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};
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

// ---- the wide kernel: decode steps of many tokens, one warp per (token, kv head, split) ----
//
// Each lane owns one position of a 32-position chunk: its K row into registers and its V row into
// shared memory (cp.async) are requested together, so a warp has its whole chunk in flight at
// once; the chunk's softmax is a warp reduction, and P·V reads the V rows back from shared memory
// with each lane owning head_dim / 32 dims. No block-wide barrier after the prologue. Partials
// go to scratch ([t][head][split][hd + 2]) and CombineGenericKernel merges them.

static constexpr int kWideWarps = 4;

static __device__ __forceinline__ void CpAsync16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
}

template <int kHD, int kG>
static __global__ void __launch_bounds__(kWideWarps * 32) AttentionWideKernel(AttentionItemArgs a) {
  constexpr int kDims = kHD / 32;   // V dims per lane in P·V
  constexpr int kPieces = kHD / 8;  // 16-byte pieces per row
  constexpr int kHalf = kHD / 2;
  __shared__ __align__(16) float q[kG][kHD];
  __shared__ float own_k[kHD], own_v[kHD];
  __shared__ __align__(16) __nv_bfloat16 vs[kWideWarps][32][kHD];
  __shared__ float ps[kWideWarps][kG][32];
  const int t = blockIdx.x, kvh = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int split = blockIdx.z * kWideWarps + warp;
  const TokenKv tok = a.kv[t];
  const int pos = tok.position, ctx = pos + 1;
  const int width = a.num_kv_heads * kHD;
  const int per = ((ctx + a.splits - 1) / a.splits + 31) / 32 * 32;  // whole chunks per split
  const int p0 = min(ctx, split * per), p1 = min(ctx, p0 + per);
  const __nv_bfloat16* kbase = KvRow(tok, a.layer, 0, 0, width) + kvh * kHD;
  const __nv_bfloat16* vbase = KvRow(tok, a.layer, 1, 0, width) + kvh * kHD;
  GridDependencyWait();
  AllowDependents();

  // Prologue (whole block): q rotated and scaled, this token's K (rotated) and V, bf16-rounded as
  // the cache stores them; the block holding the token's own position appends them.
  const float* row = a.qkv + static_cast<int64_t>(t) * (a.num_heads + 2 * a.num_kv_heads) * kHD;
  const float2* cs = a.rope + static_cast<int64_t>(pos) * kHalf;
  const float scale = rsqrtf(static_cast<float>(kHD));
  for (int e = threadIdx.x; e < kG * kHD; e += kWideWarps * 32) {
    const int g = e / kHD, d = e % kHD, i = d % kHalf;
    const float* h = row + (kvh * kG + g) * kHD;
    const float x0 = h[i], x1 = h[i + kHalf];
    const float2 c = cs[i];
    q[g][d] = (d < kHalf ? x0 * c.x - x1 * c.y : x1 * c.x + x0 * c.y) * scale;
  }
  const bool owner_block = pos / per / kWideWarps == static_cast<int>(blockIdx.z);
  for (int d = threadIdx.x; d < kHD; d += kWideWarps * 32) {
    const float* hk = row + (a.num_heads + kvh) * kHD;
    const int i = d % kHalf;
    const float2 c = cs[i];
    const __nv_bfloat16 k = __float2bfloat16(d < kHalf ? hk[i] * c.x - hk[i + kHalf] * c.y
                                                       : hk[i + kHalf] * c.x + hk[i] * c.y);
    const __nv_bfloat16 v = __float2bfloat16(row[(a.num_heads + a.num_kv_heads + kvh) * kHD + d]);
    own_k[d] = __bfloat162float(k);
    own_v[d] = __bfloat162float(v);
    if (owner_block) {
      KvRow(tok, a.layer, 0, pos, width)[kvh * kHD + d] = k;
      KvRow(tok, a.layer, 1, pos, width)[kvh * kHD + d] = v;
    }
  }
  __syncthreads();

  float m[kG], l[kG], acc[kG][kDims];
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[g][i] = 0.0f;
  }
  for (int c0 = p0; c0 < p1; c0 += 32) {
    const int p = c0 + lane;
    const bool valid = p < p1;
    __nv_bfloat16* vrow = vs[warp][lane];
    if (valid && p != pos) {
      const __nv_bfloat16* src = vbase + static_cast<int64_t>(p) * width;
#pragma unroll
      for (int c = 0; c < kPieces; ++c) CpAsync16(vrow + 8 * c, src + 8 * c);
    } else if (valid) {
      for (int d = 0; d < kHD; ++d) vrow[d] = __float2bfloat16(own_v[d]);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
    float s[kG];
#pragma unroll
    for (int g = 0; g < kG; ++g) s[g] = -INFINITY;
    if (valid) {
#pragma unroll
      for (int g = 0; g < kG; ++g) s[g] = 0.0f;
      if (p == pos) {
        for (int d = 0; d < kHD; ++d) {
#pragma unroll
          for (int g = 0; g < kG; ++g) s[g] += q[g][d] * own_k[d];
        }
      } else {
        const uint4* krow = reinterpret_cast<const uint4*>(kbase + static_cast<int64_t>(p) * width);
        uint4 kr[kPieces];
#pragma unroll
        for (int c = 0; c < kPieces; ++c) kr[c] = krow[c];
#pragma unroll
        for (int c = 0; c < kPieces; ++c) {
          float kf[8];
          Bf16x8ToFloat(kr[c], kf);
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            const float4 qa = *reinterpret_cast<const float4*>(&q[g][c * 8]);
            const float4 qb = *reinterpret_cast<const float4*>(&q[g][c * 8 + 4]);
            s[g] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                    qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
          }
        }
      }
    }
    float r[kG];
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      float mx = s[g];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m[g], mx);
      const float e = valid ? __expf(s[g] - m_new) : 0.0f;
      float sum = e;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      r[g] = __expf(m[g] - m_new);
      l[g] = l[g] * r[g] + sum;
      m[g] = m_new;
      ps[warp][g][lane] = e;
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncwarp();
#pragma unroll
    for (int g = 0; g < kG; ++g)
#pragma unroll
      for (int i = 0; i < kDims; ++i) acc[g][i] *= r[g];
    const int n = min(32, p1 - c0);
    for (int j = 0; j < n; ++j) {
      float v[kDims];
      if constexpr (kDims == 1) {
        v[0] = __bfloat162float(vs[warp][j][lane]);
      } else {
#pragma unroll
        for (int i = 0; i < kDims; i += 2) {
          const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&vs[warp][j][lane * kDims + i]));
          v[i] = f.x;
          v[i + 1] = f.y;
        }
      }
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        const float pj = ps[warp][g][j];
#pragma unroll
        for (int i = 0; i < kDims; ++i) acc[g][i] += pj * v[i];
      }
    }
    __syncwarp();  // vs and ps are rewritten by the next chunk
  }
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    float* part = a.scratch + ((static_cast<int64_t>(t) * a.num_heads + kvh * kG + g) * a.splits + split) * (kHD + 2);
#pragma unroll
    for (int i = 0; i < kDims; ++i) part[lane * kDims + i] = acc[g][i];
    if (lane == 0) {
      part[kHD] = m[g];
      part[kHD + 1] = l[g];
    }
  }
}

int WideAttentionSplits(int tokens, int num_kv_heads, int sm_count) {
  // About one resident wave of warps (16 per SM at this kernel's registers), in whole blocks of 4.
  const int warps = 16 * sm_count / std::max(1, tokens * num_kv_heads);
  return std::clamp(warps / kWideWarps * kWideWarps, kWideWarps, kMaxWideAttentionSplits);
}

bool WideAttentionSupports(int head_dim, int group) {
  return (head_dim == 32 || head_dim == 64 || head_dim == 128) &&
         (group == 1 || group == 2 || group == 4 || group == 8);
}

template <int kHD>
static void LaunchWideGroup(int group, const AttentionItemArgs& args, int tokens, cudaStream_t stream) {
  const dim3 grid(tokens, args.num_kv_heads, args.splits / kWideWarps);
  const dim3 block(kWideWarps * 32);
  switch (group) {
    case 1: LaunchKernel(AttentionWideKernel<kHD, 1>, grid, block, 0, stream, args); break;
    case 2: LaunchKernel(AttentionWideKernel<kHD, 2>, grid, block, 0, stream, args); break;
    case 4: LaunchKernel(AttentionWideKernel<kHD, 4>, grid, block, 0, stream, args); break;
    case 8: LaunchKernel(AttentionWideKernel<kHD, 8>, grid, block, 0, stream, args); break;
  }
}

void LaunchAttentionWide(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                         int num_kv_heads, int head_dim, int layer, int splits, float* scratch,
                         __nv_bfloat16* out, cudaStream_t stream) {
  if (tokens == 0) return;
  const int group = num_heads / num_kv_heads;
  const AttentionItemArgs args{qkv, kv, rope, num_heads, num_kv_heads, layer, splits, scratch, nullptr, out};
  switch (head_dim) {
    case 32: LaunchWideGroup<32>(group, args, tokens, stream); break;
    case 64: LaunchWideGroup<64>(group, args, tokens, stream); break;
    case 128: LaunchWideGroup<128>(group, args, tokens, stream); break;
  }
  LaunchKernel(CombineGenericKernel, dim3(tokens, num_heads), dim3(std::min(head_dim, 128)), 0, stream,
               static_cast<const float*>(scratch), num_heads, head_dim, splits, out);
}

template <int kHD, int kG>
static void LaunchFast(float* qkv, const TokenKv* kv, const float2* rope, int tokens,
                       int num_heads, int num_kv_heads, int layer, int splits, float* scratch,
                       int* counters, __nv_bfloat16* out, cudaStream_t stream) {
  const AttentionItemArgs args{qkv, kv, rope, num_heads, num_kv_heads, layer, splits, scratch, counters, out};
  LaunchKernel(AttentionFastKernel<kHD, kG>, dim3(tokens, num_kv_heads, splits), dim3(kFastThreads),
               0, stream, args);
}

template <int kHD>
static bool DispatchGroup(int group, float* qkv, const TokenKv* kv, const float2* rope,
                          int tokens, int num_heads, int num_kv_heads, int layer, int splits,
                          float* scratch, int* counters, __nv_bfloat16* out, cudaStream_t stream) {
  switch (group) {
    case 1: LaunchFast<kHD, 1>(qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); return true;
    case 2: LaunchFast<kHD, 2>(qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); return true;
    case 4: LaunchFast<kHD, 4>(qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); return true;
    case 8: LaunchFast<kHD, 8>(qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); return true;
    default: return false;
  }
}

void LaunchAttention(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                     int num_kv_heads, int head_dim, int layer, int splits, float* scratch,
                     int* counters, __nv_bfloat16* out, cudaStream_t stream) {
  if (tokens == 0) return;
  const int group = num_heads / num_kv_heads;
  bool done = false;
  switch (head_dim) {
    case 32: done = DispatchGroup<32>(group, qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); break;
    case 64: done = DispatchGroup<64>(group, qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); break;
    case 128: done = DispatchGroup<128>(group, qkv, kv, rope, tokens, num_heads, num_kv_heads, layer, splits, scratch, counters, out, stream); break;
    default: break;
  }
  if (done) return;
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
