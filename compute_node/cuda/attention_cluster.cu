// The decode attention on thread-block clusters (attention.cuh, LaunchAttention's decode path
// for head_dim 64/128 and group 1/2/4/8).
//
// A (token, kv head) is one cluster of kSplits (8) blocks, each owning a contiguous range of
// the context. Before its PDL wait a block starts copying its first tile of K and V rows (written
// by earlier steps) into shared memory with cp.async, so the cache read overlaps the qkv product;
// after the wait it reads q and the token's own k and v, appends those to the cache (the block
// holding the token's position), and runs an online softmax over its tiles (the next tile's copy
// in flight while the current one is used). The splits' partial sums stay in shared memory and
// are merged through the cluster's distributed shared memory between two cluster barriers: no
// scratch in global memory, no arrival counters, no fences.
#include <cooperative_groups.h>

#include "compute_node/cuda/attention.cuh"
#include "compute_node/cuda/attention_item.cuh"
#include "compute_node/cuda/bulk_copy.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/skinny_ops.cuh"

namespace ultramem::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kSplits = 8;  // blocks per cluster (the portable maximum)

template <int kHD>
constexpr int kRowBytes = kHD * 2 + 16;  // padded: 16-byte reads of consecutive rows hit distinct banks

// kTileP positions per staged tile.
template <int kHD, int kG, int kTileP>
struct ClusterSmem {
  alignas(16) unsigned char k[2][kTileP][kRowBytes<kHD>];
  alignas(16) unsigned char v[2][kTileP][kRowBytes<kHD>];
  alignas(16) float q[kG][kHD];  // rotated and pre-scaled
  float s[kG][kTileP];           // scores, then weights
  float o[kG][kHD];              // this split's partial (unnormalized), m and l
  float m[kG], l[kG];
};

struct ClusterArgs {
  const float* qkv;
  const TokenKv* kv;
  const float2* rope;
  int num_heads, num_kv_heads, layer;
  __nv_bfloat16* out;
};

template <int kHD, int kG, int kTileP>
__global__ void __launch_bounds__(kThreads) AttentionClusterKernel(ClusterArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& sm = *reinterpret_cast<ClusterSmem<kHD, kG, kTileP>*>(smem_raw);
  cg::cluster_group cluster = cg::this_cluster();
  const int split = static_cast<int>(cluster.block_rank());
  const int kvh = blockIdx.y, t = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const TokenKv tok = a.kv[t];  // copied from the host before the step, not written by a kernel
  const int pos = tok.position, ctx = pos + 1;
  const int chunk = (ctx + kSplits - 1) / kSplits;
  const int p0 = min(ctx, split * chunk), p1 = min(ctx, p0 + chunk);
  const int width = a.num_kv_heads * kHD;
  const __nv_bfloat16* kbase = KvRow(tok, a.layer, 0, 0, width) + kvh * kHD;
  const __nv_bfloat16* vbase = KvRow(tok, a.layer, 1, 0, width) + kvh * kHD;
  constexpr int kChunks = kHD / 8;  // 16-byte pieces of a row
  auto stage = [&](int tile, int buf) {
    const int n = min(kTileP, p1 - tile);
    for (int i = tid; i < n * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int64_t off = static_cast<int64_t>(tile + r) * width + c * 8;
      CpAsync16(&sm.k[buf][r][c * 16], kbase + off);
      CpAsync16(&sm.v[buf][r][c * 16], vbase + off);
    }
    CpAsyncCommit();
  };
  // The first tile's rows were written by earlier steps (the token's own row is replaced below).
  if (p0 < p1) stage(p0, 0);
  GridDependencyWait();
  AllowDependents();

  const float* row = a.qkv + static_cast<int64_t>(t) * (a.num_heads + 2 * a.num_kv_heads) * kHD;
  const float2* cs = a.rope + static_cast<int64_t>(pos) * (kHD / 2);
  const float scale = rsqrtf(static_cast<float>(kHD));
  for (int e = tid; e < kG * kHD; e += kThreads) {
    const int g = e / kHD, d = e % kHD;
    sm.q[g][d] = RopeAt<kHD>(row + (kvh * kG + g) * kHD, cs, d) * scale;
  }
  const bool owner = p0 < p1 && p1 == ctx;  // the split holding the token's own position
  __nv_bfloat16 own_k = __float2bfloat16(0.0f), own_v = own_k;
  if (owner && tid < kHD) OwnKv<kHD>(row, cs, a.num_heads, a.num_kv_heads, kvh, tid, tok, a.layer, true, own_k, own_v);

  // Warp w owns query heads w, w + kWarps, ...: their running max, sum and P·V accumulators.
  constexpr int kGW = (kG + kWarps - 1) / kWarps;
  constexpr int kDL = kHD / 32;  // dims per lane in P·V
  float m_run[kGW], l_run[kGW], acc[kGW][kDL];
#pragma unroll
  for (int j = 0; j < kGW; ++j) {
    m_run[j] = -INFINITY;
    l_run[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDL; ++i) acc[j][i] = 0.0f;
  }
  // Scores: thread (gs, p) takes position p of the tile for heads gs, gs + kGS, ...
  constexpr int kGS = kThreads / kTileP;
  constexpr int kGPer = (kG + kGS - 1) / kGS;
  const int sp = tid % kTileP, gs = tid / kTileP;

  for (int tile = p0, it = 0; tile < p1; tile += kTileP, ++it) {
    const int buf = it & 1;
    if (tile + kTileP < p1) {
      stage(tile + kTileP, buf ^ 1);  // that buffer was released by the barrier ending the last tile
    } else {
      CpAsyncCommit();  // an empty group, so that "all but the newest" is this tile
    }
    CpAsyncWaitGroup<1>();
    __syncthreads();  // the tile, q (first tile) and the token's own row are visible
    const int n = min(kTileP, p1 - tile);
    if (owner && pos >= tile && pos < tile + n) {
      if (tid < kHD) {
        reinterpret_cast<__nv_bfloat16*>(sm.k[buf][pos - tile])[tid] = own_k;
        reinterpret_cast<__nv_bfloat16*>(sm.v[buf][pos - tile])[tid] = own_v;
      }
      __syncthreads();
    }
    {
      float sc[kGPer];
#pragma unroll
      for (int j = 0; j < kGPer; ++j) sc[j] = 0.0f;
      if (sp < n) {
        const uint4* kr = reinterpret_cast<const uint4*>(sm.k[buf][sp]);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          float kf[8];
          Bf16x8ToFloat(LoadShared16(kr + c), kf);
#pragma unroll
          for (int j = 0; j < kGPer; ++j) {
            const int g = gs + kGS * j;
            if (g < kG) {
              const float4 qa = *reinterpret_cast<const float4*>(&sm.q[g][c * 8]);
              const float4 qb = *reinterpret_cast<const float4*>(&sm.q[g][c * 8 + 4]);
              sc[j] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                       qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kGPer; ++j) {
        const int g = gs + kGS * j;
        if (g < kG) sm.s[g][sp] = sp < n ? sc[j] : -INFINITY;
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kGW; ++j) {
      const int g = warp + kWarps * j;
      if (g >= kG) break;
      float* sg = sm.s[g];
      const SoftmaxTile st = WarpSoftmaxTile<kTileP>(sg, m_run[j], lane);  // m_new finite: a position
      const float alpha = __expf(m_run[j] - st.m_new);
      l_run[j] = l_run[j] * alpha + st.sum;
      m_run[j] = st.m_new;
#pragma unroll
      for (int i = 0; i < kDL; ++i) acc[j][i] *= alpha;
      __syncwarp();
#pragma unroll 4
      for (int p = 0; p < n; ++p) {
        const float w = sg[p];
        const __nv_bfloat16* vr = reinterpret_cast<const __nv_bfloat16*>(sm.v[buf][p]) + lane * kDL;
        if constexpr (kDL == 1) {
          acc[j][0] += w * __bfloat162float(vr[0]);
        } else {
#pragma unroll
          for (int i = 0; i < kDL; i += 2) {
            const float2 vf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vr + i));
            acc[j][i] += w * vf.x;
            acc[j][i + 1] += w * vf.y;
          }
        }
      }
    }
    __syncthreads();  // this tile's buffers and the scores are free
  }

  // This split's partial (an empty split: m = -inf, l = 0, o = 0) into shared memory.
#pragma unroll
  for (int j = 0; j < kGW; ++j) {
    const int g = warp + kWarps * j;
    if (g >= kG) break;
#pragma unroll
    for (int i = 0; i < kDL; ++i) sm.o[g][lane * kDL + i] = acc[j][i];
    if (lane == 0) {
      sm.m[g] = m_run[j];
      sm.l[g] = l_run[j];
    }
  }
  cluster.sync();
  // Merge: the cluster's blocks share the kG · kHD outputs, reading every split's partial.
  for (int e = split * kThreads + tid; e < kG * kHD; e += kSplits * kThreads) {
    const int g = e / kHD, d = e % kHD;
    float ms[kSplits], m = -INFINITY;
#pragma unroll
    for (int s = 0; s < kSplits; ++s) {
      ms[s] = cluster.map_shared_rank(&sm, s)->m[g];
      m = fmaxf(m, ms[s]);
    }
    float l = 0.0f, acc_out = 0.0f;
#pragma unroll
    for (int s = 0; s < kSplits; ++s) {
      const ClusterSmem<kHD, kG, kTileP>* rs = cluster.map_shared_rank(&sm, s);
      const float w = __expf(ms[s] - m);  // 0 for an empty split
      l += rs->l[g] * w;
      acc_out += rs->o[g][d] * w;
    }
    a.out[(static_cast<int64_t>(t) * a.num_heads + kvh * kG + g) * kHD + d] = __float2bfloat16(acc_out / l);
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
}

template <int kHD, int kG, int kTileP>
void LaunchT(const ClusterArgs& a, int tokens, cudaStream_t stream) {
  const size_t smem = sizeof(ClusterSmem<kHD, kG, kTileP>);
  LaunchKernelIn(kSplits, AttentionClusterKernel<kHD, kG, kTileP>, dim3(kSplits, a.num_kv_heads, tokens),
                 dim3(kThreads), smem, stream, a);
}

// UM_CUDA_ATTN_CLUSTER (default on) and UM_CUDA_ATTN_CLUSTER_TILE (0: by the step's size) unless a
// test overrides them.
EnvKnob cluster_enabled("UM_CUDA_ATTN_CLUSTER", 1);
EnvKnob cluster_tile("UM_CUDA_ATTN_CLUSTER_TILE", 0);

}  // namespace

void SetAttentionClusterForTesting(int enabled) { cluster_enabled.Override(enabled); }
void SetAttentionClusterTileForTesting(int tile) { cluster_tile.Override(tile); }

bool LaunchAttentionCluster(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                            int num_kv_heads, int head_dim, int layer, __nv_bfloat16* out,
                            cudaStream_t stream) {
  if (rope == nullptr || cluster_enabled.Get() == 0) return false;
  // Small steps only: with more blocks than about two waves, each block's one tile and two
  // cluster barriers cost more than the split kernel (H200, 2026-11-28: batch 1 355 -> 329 us,
  // batch 64 912 -> 1015, batch 256 1814 -> 2327 per decode step).
  if (static_cast<int64_t>(tokens) * num_kv_heads * kSplits > 2 * SmCount()) return false;
  const ClusterArgs a{qkv, kv, rope, num_heads, num_kv_heads, layer, out};
  // Tiles of 128 positions (head_dim 64) where the step's clusters take one wave: a split of a
  // 513..1024-token context is then one tile, not a full one and a sliver (H200, 2026-12-04,
  // 517-token context: batch 1 312 -> 301 us; batch 8, two waves, 522 -> 555, hence the limit).
  // UM_CUDA_ATTN_CLUSTER_TILE=64 or 128 forces one size.
  const int forced = cluster_tile.Get();
  const bool one_wave = static_cast<int64_t>(tokens) * num_kv_heads * kSplits <= SmCount();
  const int tile = forced == 64 || forced == 128 ? forced : (one_wave ? 128 : 64);
  return DispatchHeadDimAndGroup<64, 128>(head_dim, num_heads / num_kv_heads, [&](auto hd, auto g) {
    constexpr int kHD = decltype(hd)::value, kG = decltype(g)::value;
    if constexpr (kHD == 64) {
      if (tile == 128) return LaunchT<kHD, kG, 128>(a, tokens, stream);
    }
    LaunchT<kHD, kG, 64>(a, tokens, stream);
  });
}

}  // namespace ultramem::cuda
