// Implementation of attention.cuh. The fast kernel (head_dim 32/64/128, group 1/2/4/8): one block
// per (token, kv head, split), 128 threads; positions in tiles of 128 (one per thread for the
// scores, each thread loading its whole K row in 16-byte pieces), online softmax per query head,
// then P·V with each lane owning 8 dims of a V row (16-byte loads, several rows in flight); the
// last split to finish merges. The generic kernels below cover every other shape (kernel 1 the
// same tiling with scalar V reads, kernel 2 the merge).
#include "compute_node/cuda/attention.cuh"

#include <algorithm>
#include <cmath>

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

// ---- the fast kernel ----

static constexpr int kFastThreads = 128;
static constexpr int kTile = 128;  // positions per tile: one per thread for the scores
static constexpr int kFastWarps = kFastThreads / 32;

template <int kHD, int kG>
struct FastSmem {
  float q[kG][kHD];  // pre-scaled (and rotated when fused)
  float own_k[kHD], own_v[kHD];  // fused: this token's K and V (bf16-rounded)
  float p[kG][kTile];
  float m_run[kG], l_run[kG], rescale[kG];
  float red[kFastWarps][kG][kHD];
  int last;
};

static __device__ __forceinline__ void Bf16x8ToFloat(const uint4& raw, float* f) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const float2 v = __bfloat1622float2(pairs[u]);
    f[2 * u] = v.x;
    f[2 * u + 1] = v.y;
  }
}

template <int kHD, int kG>
static __global__ void __launch_bounds__(kFastThreads)
    AttentionFastKernel(const float* qkv, const TokenKv* kv, const float2* rope, int num_heads,
                        int num_kv_heads, int layer, int splits, float* scratch, int* counters,
                        __nv_bfloat16* out) {
  constexpr int kL = kHD / 8;               // lanes per V row (8 dims each)
  constexpr int kRowsPerWarp = 32 / kL;     // V rows per warp load instruction
  constexpr int kRowStep = kFastWarps * kRowsPerWarp;
  constexpr int kUnroll = 4;
  __shared__ FastSmem<kHD, kG> sm;
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int width = num_kv_heads * kHD;
  const TokenKv tok = kv[t];  // copied from the host before the step, not written by a kernel
  const int pos = tok.position;
  const int ctx = pos + 1;
  const int chunk = (ctx + splits - 1) / splits;
  const int p0 = min(ctx, split * chunk);
  const int p1 = min(ctx, p0 + chunk);
  const bool fused = rope != nullptr;
  const __nv_bfloat16* kbase = KvRow(tok, layer, 0, 0, width) + kvh * kHD;
  const __nv_bfloat16* vbase = KvRow(tok, layer, 1, 0, width) + kvh * kHD;
  // Decode: the rows before the token's own position were written by earlier steps, so this
  // thread's first K row is loaded, and its V row asked of L2, while the previous kernel runs.
  uint4 kraw[kHD / 8];  // this thread's K row of the current tile
  bool have_kfirst = false;
  if (fused && p0 + tid < p1 && p0 + tid != pos) {
    const uint4* krow = reinterpret_cast<const uint4*>(kbase + static_cast<int64_t>(p0 + tid) * width);
#pragma unroll
    for (int c = 0; c < kHD / 8; ++c) kraw[c] = krow[c];
    have_kfirst = true;
    PrefetchL2(vbase + static_cast<int64_t>(p0 + tid) * width, kHD * 2);
  }
  GridDependencyWait();
  AllowDependents();

  const float scale = rsqrtf(static_cast<float>(kHD));
  const float* row = qkv + static_cast<int64_t>(t) * (num_heads + 2 * num_kv_heads) * kHD;
  constexpr int kHalf = kHD / 2;
  const float2* cs = fused ? rope + static_cast<int64_t>(pos) * kHalf : nullptr;
  for (int e = tid; e < kG * kHD; e += kFastThreads) {
    const int g = e / kHD, d = e % kHD;
    const float* h = row + (kvh * kG + g) * kHD;
    float v;
    if (fused) {
      const int i = d % kHalf;
      const float a = h[i], b = h[i + kHalf];
      const float2 c = cs[i];
      v = d < kHalf ? a * c.x - b * c.y : b * c.x + a * c.y;
    } else {
      v = h[d];
    }
    sm.q[g][d] = v * scale;
  }
  if (fused) {
    const bool owner = p0 < p1 && p1 == ctx;  // the split holding the token's own position
    for (int d = tid; d < kHD; d += kFastThreads) {
      const float* hk = row + (num_heads + kvh) * kHD;
      const int i = d % kHalf;
      const float a = hk[i], b = hk[i + kHalf];
      const float2 c = cs[i];
      const __nv_bfloat16 k = __float2bfloat16(d < kHalf ? a * c.x - b * c.y : b * c.x + a * c.y);
      const __nv_bfloat16 v = __float2bfloat16(row[(num_heads + num_kv_heads + kvh) * kHD + d]);
      sm.own_k[d] = __bfloat162float(k);
      sm.own_v[d] = __bfloat162float(v);
      if (owner) {
        KvRow(tok, layer, 0, pos, width)[kvh * kHD + d] = k;
        KvRow(tok, layer, 1, pos, width)[kvh * kHD + d] = v;
      }
    }
  }
  if (tid < kG) {
    sm.m_run[tid] = -INFINITY;
    sm.l_run[tid] = 0.0f;
  }
  const int sub = lane / kL, dl = lane % kL;
  float acc[kG][8];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  __syncthreads();

  for (int tile = p0; tile < p1; tile += kTile) {
    // Scores of this thread's position for every query head of the group.
    const int p = tile + tid;
    if (p < p1) {
      float s[kG];
#pragma unroll
      for (int g = 0; g < kG; ++g) s[g] = 0.0f;
      if (fused && p == pos) {
#pragma unroll 8
        for (int d = 0; d < kHD; ++d) {
          const float k = sm.own_k[d];
#pragma unroll
          for (int g = 0; g < kG; ++g) s[g] += sm.q[g][d] * k;
        }
      } else {
        const uint4* krow = reinterpret_cast<const uint4*>(kbase + static_cast<int64_t>(p) * width);
        if (tile != p0 || !have_kfirst) {
#pragma unroll
          for (int c = 0; c < kHD / 8; ++c) kraw[c] = krow[c];
        }
#pragma unroll
        for (int c = 0; c < kHD / 8; ++c) {
          float kf[8];
          Bf16x8ToFloat(kraw[c], kf);
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            const float4 qa = *reinterpret_cast<const float4*>(&sm.q[g][c * 8]);
            const float4 qb = *reinterpret_cast<const float4*>(&sm.q[g][c * 8 + 4]);
            s[g] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                    qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kG; ++g) sm.p[g][tid] = s[g];
    } else {
#pragma unroll
      for (int g = 0; g < kG; ++g) sm.p[g][tid] = -INFINITY;
    }
    __syncthreads();
    // Online softmax: warp w updates heads w, w + 4, ...
    for (int g = warp; g < kG; g += kFastWarps) {
      float* pg = sm.p[g];
      float mx = -INFINITY;
      for (int j = lane; j < kTile; j += 32) mx = fmaxf(mx, pg[j]);
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(sm.m_run[g], mx);
      float sum = 0.0f;
      for (int j = lane; j < kTile; j += 32) {
        const float e = __expf(pg[j] - m_new);
        pg[j] = e;
        sum += e;
      }
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        const float r = __expf(sm.m_run[g] - m_new);
        sm.rescale[g] = r;
        sm.l_run[g] = sm.l_run[g] * r + sum;
        sm.m_run[g] = m_new;
      }
    }
    __syncthreads();
    // P·V: lane (sub, dl) takes rows warp·kRowsPerWarp + sub (+ kRowStep ...), dims dl·8 .. +8.
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const float r = sm.rescale[g];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= r;
    }
    const int n = min(kTile, p1 - tile);
    for (int j0 = warp * kRowsPerWarp + sub; j0 < n; j0 += kUnroll * kRowStep) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = j0 + u * kRowStep;
        raw[u] = j < n ? *reinterpret_cast<const uint4*>(vbase + static_cast<int64_t>(tile + j) * width + dl * 8)
                       : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = j0 + u * kRowStep;
        if (j < n) {
          float vf[8];
          if (fused && tile + j == pos) {
#pragma unroll
            for (int i = 0; i < 8; ++i) vf[i] = sm.own_v[dl * 8 + i];
          } else {
            Bf16x8ToFloat(raw[u], vf);
          }
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            const float pj = sm.p[g][j];
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[g][i] += pj * vf[i];
          }
        }
      }
    }
    __syncthreads();
  }

  // Sum the rows' partial products: within the warp (lanes of equal dl), then across warps.
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int o = kL; o < 32; o <<= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < kG; ++g)
#pragma unroll
      for (int i = 0; i < 8; ++i) sm.red[warp][g][dl * 8 + i] = acc[g][i];
  }
  __syncthreads();
  const int head0 = kvh * kG;
  if (splits == 1) {
    for (int e = tid; e < kG * kHD; e += kFastThreads) {
      const int g = e / kHD, d = e % kHD;
      float a = 0.0f;
#pragma unroll
      for (int w = 0; w < kFastWarps; ++w) a += sm.red[w][g][d];
      out[(static_cast<int64_t>(t) * num_heads + head0 + g) * kHD + d] = __float2bfloat16(a / sm.l_run[g]);
    }
    return;
  }
  // Partial: [t][head][split][hd + 2] = acc (unnormalized), m, l; the last block merges.
  for (int e = tid; e < kG * kHD; e += kFastThreads) {
    const int g = e / kHD, d = e % kHD;
    float a = 0.0f;
#pragma unroll
    for (int w = 0; w < kFastWarps; ++w) a += sm.red[w][g][d];
    float* part = scratch + ((static_cast<int64_t>(t) * num_heads + head0 + g) * splits + split) * (kHD + 2);
    part[d] = a;
    if (d == 0) {
      part[kHD] = sm.m_run[g];
      part[kHD + 1] = sm.l_run[g];
    }
  }
  __threadfence();
  __syncthreads();
  int* counter = counters + t * num_kv_heads + kvh;
  if (tid == 0) sm.last = atomicAdd(counter, 1) == splits - 1;
  __syncthreads();
  if (!sm.last) return;
  __threadfence();
  for (int e = tid; e < kG * kHD; e += kFastThreads) {
    const int g = e / kHD, d = e % kHD;
    const float* parts = scratch + (static_cast<int64_t>(t) * num_heads + head0 + g) * splits * (kHD + 2);
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, __ldcg(parts + s * (kHD + 2) + kHD));
    float l = 0.0f, a = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* ps = parts + s * (kHD + 2);
      const float ms = __ldcg(ps + kHD);
      if (ms == -INFINITY) continue;  // an empty split
      const float w = __expf(ms - m);
      l += __ldcg(ps + kHD + 1) * w;
      a += __ldcg(ps + d) * w;
    }
    out[(static_cast<int64_t>(t) * num_heads + head0 + g) * kHD + d] = __float2bfloat16(a / l);
  }
  if (tid == 0) *counter = 0;
}

template <int kHD, int kG>
static void LaunchFast(float* qkv, const TokenKv* kv, const float2* rope, int tokens,
                       int num_heads, int num_kv_heads, int layer, int splits, float* scratch,
                       int* counters, __nv_bfloat16* out, cudaStream_t stream) {
  LaunchKernel(AttentionFastKernel<kHD, kG>, dim3(tokens, num_kv_heads, splits), dim3(kFastThreads),
               0, stream, qkv, kv, rope, num_heads, num_kv_heads, layer, splits, scratch, counters,
               out);
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
