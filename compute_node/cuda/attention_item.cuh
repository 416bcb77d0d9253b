// One work item of the fast decode/prefill attention (head_dim 32/64/128, group 1/2/4/8): a
// (token, kv head, split) handled by 128 threads; positions in tiles of 128 (one per thread for the
// scores, each thread loading its whole K row in 16-byte pieces), online softmax per query head,
// then P·V with each lane owning 8 dims of a V row (16-byte loads, several rows in flight); the
// last split of a (token, kv head) to finish merges (arrival counter, left at zero). Shared by the
// standalone attention kernel (attention.cu, one item per block) and the persistent decode kernel
// (decode_kernel.cu, items on groups of 128 threads, merging later: defer_merge): `sync` is the group's barrier, `wait` runs
// once after the first K row is in registers (the standalone kernel's PDL wait). qkv is read
// through L2 (__ldcg): in the persistent kernel other blocks wrote it in the same launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "common/cuda/bf16.cuh"
#include "compute_node/cuda/kv_cache.cuh"
#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

struct AttentionItemArgs {
  const float* qkv;
  const TokenKv* kv;
  const float2* rope;  // null: q and the new K/V already rotated and appended
  int num_heads, num_kv_heads, layer, splits;
  float* scratch;
  int* counters;
  __nv_bfloat16* out;
  // Leave every split's partial in scratch (also with one split) and merge nothing: the persistent
  // decode kernel merges while staging the next product's input.
  bool defer_merge = false;
};

inline constexpr int kFastThreads = 128;
inline constexpr int kTile = 128;  // positions per tile: one per thread for the scores
inline constexpr int kFastWarps = kFastThreads / 32;

template <int kHD, int kG>
struct AttentionItemSmem {
  float q[kG][kHD];  // pre-scaled (and rotated when fused)
  float own_k[kHD], own_v[kHD];  // fused: this token's K and V (bf16-rounded)
  float p[kG][kTile];
  float m_run[kG], l_run[kG], rescale[kG];
  float red[kFastWarps][kG][kHD];
  int last;
};

// Host side: calls f(std::integral_constant<int, head_dim>{}, std::integral_constant<int, group>{})
// when head_dim is one of kHeadDims and group is 1, 2, 4 or 8 (the fast kernels' template
// instances); returns false, calling nothing, otherwise.
template <int... kHeadDims, class F>
bool DispatchHeadDimAndGroup(int head_dim, int group, F&& f) {
  auto with_group = [&](auto hd) {
    switch (group) {
      case 1: f(hd, std::integral_constant<int, 1>{}); return true;
      case 2: f(hd, std::integral_constant<int, 2>{}); return true;
      case 4: f(hd, std::integral_constant<int, 4>{}); return true;
      case 8: f(hd, std::integral_constant<int, 8>{}); return true;
      default: return false;
    }
  };
  bool done = false;
  ((head_dim == kHeadDims && (done = with_group(std::integral_constant<int, kHeadDims>{}), true)) || ...);
  return done;
}

// The whole block's barrier, for the helpers below that take a thread group's.
struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

// One tile of an online softmax on one warp: s[0..kN) are the tile's scores (-inf where no
// position), exponentiated in place against the new running maximum max(m_run, max s); returns
// that maximum and the sum of the exponentials. Callers rescale their running sums by
// exp(m_run - m_new).
struct SoftmaxTile {
  float m_new, sum;
};
template <int kN>
__device__ __forceinline__ SoftmaxTile WarpSoftmaxTile(float* s, float m_run, int lane) {
  float mx = -INFINITY;
#pragma unroll
  for (int j = lane; j < kN; j += 32) mx = fmaxf(mx, s[j]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  const float m_new = fmaxf(m_run, mx);
  float sum = 0.0f;
#pragma unroll
  for (int j = lane; j < kN; j += 32) {
    const float e = __expf(s[j] - m_new);
    s[j] = e;
    sum += e;
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  return {m_new, sum};
}

// Folds a tile's maximum and sum into a head's running ones (kept in shared memory, updated by one
// lane); `rescale` gets exp(m_run - m_new), the factor the head's earlier partial sums take.
__device__ __forceinline__ void FoldSoftmaxTile(const SoftmaxTile& st, float& m_run, float& l_run, float& rescale) {
  const float r = __expf(m_run - st.m_new);
  rescale = r;
  l_run = l_run * r + st.sum;
  m_run = st.m_new;
}

// Element d of a head's row h (a q or k head of a token's qkv row, read through L2) rotated by
// RoPE; cs: the (cos, sin) pairs of the token's position.
template <int kHD>
__device__ __forceinline__ float RopeAt(const float* h, const float2* cs, int d) {
  constexpr int kHalf = kHD / 2;
  const int i = d % kHalf;
  const float x0 = __ldcg(h + i), x1 = __ldcg(h + i + kHalf);
  const float2 c = cs[i];
  return d < kHalf ? x0 * c.x - x1 * c.y : x1 * c.x + x0 * c.y;
}

// Dim d of the token's own K (rotated) and V row for kv head kvh, rounded to bf16 as the cache holds
// them (row: the token's qkv row); the split holding the token's position (`append`) also writes
// them to the token's cache at its position.
template <int kHD>
__device__ __forceinline__ void OwnKv(const float* row, const float2* cs, int num_heads, int num_kv_heads, int kvh,
                                      int d, const TokenKv& tok, int layer, bool append, __nv_bfloat16& k,
                                      __nv_bfloat16& v) {
  k = __float2bfloat16(RopeAt<kHD>(row + (num_heads + kvh) * kHD, cs, d));
  v = __float2bfloat16(__ldcg(row + (num_heads + num_kv_heads + kvh) * kHD + d));
  if (append) {
    const int width = num_kv_heads * kHD;
    KvRow(tok, layer, 0, tok.position, width)[kvh * kHD + d] = k;
    KvRow(tok, layer, 1, tok.position, width)[kvh * kHD + d] = v;
  }
}

// The split merge, once this block's partials for (token t, kv head kvh) are in scratch
// ([t][head][split][hd + 2]: unnormalized sums, m, l): the block arrives on the pair's counter and,
// if it is the last of the splits, sums every split's partial into out (weights exp(m_s - max m))
// and resets the counter for the next call. `sync` is the block's barrier, `last` a shared flag.
template <int kHD, int kG, int kThreads, class Sync>
__device__ __forceinline__ void ArriveAndMerge(const AttentionItemArgs& a, int t, int kvh, int tid, int& last,
                                               Sync sync) {
  __threadfence();
  sync();
  int* counter = a.counters + t * a.num_kv_heads + kvh;
  if (tid == 0) last = atomicAdd(counter, 1) == a.splits - 1;
  sync();
  if (!last) return;
  __threadfence();
  const int head0 = kvh * kG;
  for (int e = tid; e < kG * kHD; e += kThreads) {
    const int g = e / kHD, d = e % kHD;
    const float* parts = a.scratch + (static_cast<int64_t>(t) * a.num_heads + head0 + g) * a.splits * (kHD + 2);
    float m = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < a.splits; ++s) m = fmaxf(m, __ldcg(parts + s * (kHD + 2) + kHD));
    float l = 0.0f, acc = 0.0f;
#pragma unroll 8
    for (int s = 0; s < a.splits; ++s) {
      const float* ps = parts + s * (kHD + 2);
      const float w = __expf(__ldcg(ps + kHD) - m);  // 0 for an empty split (m = -inf, its sums 0)
      l += __ldcg(ps + kHD + 1) * w;
      acc += __ldcg(ps + d) * w;
    }
    a.out[(static_cast<int64_t>(t) * a.num_heads + head0 + g) * kHD + d] = __float2bfloat16(acc / l);
  }
  if (tid == 0) *counter = 0;
}

template <int kHD, int kG, class Sync, class Wait>
__device__ __forceinline__ void AttentionItem(AttentionItemSmem<kHD, kG>& sm, const AttentionItemArgs& args,
                                              int t, int kvh, int split, int tid, Sync sync, Wait wait) {
  const float* qkv = args.qkv;
  const TokenKv* kv = args.kv;
  const float2* rope = args.rope;
  const int num_heads = args.num_heads, num_kv_heads = args.num_kv_heads, layer = args.layer;
  const int splits = args.splits;
  float* scratch = args.scratch;
  __nv_bfloat16* out = args.out;
  constexpr int kL = kHD / 8;               // lanes per V row (8 dims each)
  constexpr int kRowsPerWarp = 32 / kL;     // V rows per warp load instruction
  constexpr int kRowStep = kFastWarps * kRowsPerWarp;
  constexpr int kUnroll = 4;
  const int warp = tid >> 5, lane = tid & 31;
  sync();  // the previous item of this thread group is done with `sm`
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
  wait();

  const float scale = rsqrtf(static_cast<float>(kHD));
  const float* row = qkv + static_cast<int64_t>(t) * (num_heads + 2 * num_kv_heads) * kHD;
  constexpr int kHalf = kHD / 2;
  const float2* cs = fused ? rope + static_cast<int64_t>(pos) * kHalf : nullptr;
  for (int e = tid; e < kG * kHD; e += kFastThreads) {
    const int g = e / kHD, d = e % kHD;
    const float* h = row + (kvh * kG + g) * kHD;
    sm.q[g][d] = (fused ? RopeAt<kHD>(h, cs, d) : __ldcg(h + d)) * scale;
  }
  if (fused) {
    const bool owner = p0 < p1 && p1 == ctx;  // the split holding the token's own position
    for (int d = tid; d < kHD; d += kFastThreads) {
      __nv_bfloat16 k, v;
      OwnKv<kHD>(row, cs, num_heads, num_kv_heads, kvh, d, tok, layer, owner, k, v);
      sm.own_k[d] = __bfloat162float(k);
      sm.own_v[d] = __bfloat162float(v);
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
  sync();

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
    sync();
    // Online softmax: warp w updates heads w, w + 4, ...
    for (int g = warp; g < kG; g += kFastWarps) {
      const SoftmaxTile st = WarpSoftmaxTile<kTile>(sm.p[g], sm.m_run[g], lane);
      if (lane == 0) FoldSoftmaxTile(st, sm.m_run[g], sm.l_run[g], sm.rescale[g]);
    }
    sync();
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
    sync();
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
  sync();
  const int head0 = kvh * kG;
  if (splits == 1 && !args.defer_merge) {
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
  if (args.defer_merge) return;
  ArriveAndMerge<kHD, kG, kFastThreads>(args, t, kvh, tid, sm.last, sync);
}


}  // namespace ultramem::cuda
