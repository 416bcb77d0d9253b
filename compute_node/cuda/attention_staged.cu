// The decode attention for wider steps (attention.cuh, LaunchAttentionStaged): one block of 128
// threads per (token, kv head, split), like the fast kernel, but each of the block's four warps
// streams its own chunks of 16 positions (warp w takes chunks w, w + 4, ... of the split) into
// shared memory through a private cp.async ring, the first chunks requested before the PDL wait
// (rows written by earlier steps; the token's own row is replaced after it lands). The group's
// heads are the tensor-core step's M (padded to 16 rows, bf16 q and weights, fp32 sums), so
// S = Q·Kᵀ leaves each head's scores in the lanes that hold them as P·V's A fragment: the online
// softmax runs on registers (quad shuffles) and the loop has no block barrier. The warps' (max,
// sum, output) merge once at the end through shared memory; splits merge through scratch and the
// arrival counter, the last block of a (token, kv head) summing them.
//
// It replaced a kernel whose four warps shared one ring of 64-position tiles and met at four
// barriers a tile (H200, 2026-12-04, graph us a decode step: batch 24 652.8 -> 647.2, 32 646.5 ->
// 643.5, 48 766 -> 719, 64 735 -> 723, 256 1375 -> 1368).

#include "compute_node/cuda/attention.cuh"
#include "compute_node/cuda/attention_item.cuh"
#include "compute_node/cuda/bulk_copy.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/skinny_ops.cuh"

namespace ultramem::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
template <int kHD>
constexpr int kRowBytes = kHD * 2 + 16;  // padded: the 8 rows an ldmatrix reads hit distinct banks

// Four 8x8 bf16 matrices from shared memory (lane l gives the address of row l % 8 of matrix l / 8),
// as mma.sync's A fragment; .trans transposes each matrix.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

constexpr int kChunk = 16;  // positions a warp takes at a time

// kRing chunks a warp's ring holds (kRing - 1 in flight while it computes on one).
template <int kHD, int kG, int kRing>
struct WarpSmem {
  alignas(16) unsigned char k[kWarps][kRing][kChunk][kRowBytes<kHD>];
  alignas(16) unsigned char v[kWarps][kRing][kChunk][kRowBytes<kHD>];
  alignas(16) __nv_bfloat16 q[16][kHD + 8];  // rotated, pre-scaled; rows past the group zero
  __nv_bfloat16 own_k[kHD], own_v[kHD];
  float o[kWarps][kG][kHD];  // each warp's unnormalized output
  float m[kWarps][kG], l[kWarps][kG];
  int last;
};

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <int kHD, int kG, int R>
__global__ void __launch_bounds__(kThreads) AttentionWarpKernel(AttentionItemArgs a) {
  static_assert(kG <= 8, "the group's heads are rows g of the m16 tile");
  using Smem = WarpSmem<kHD, kG, R>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& sm = *reinterpret_cast<Smem*>(smem_raw);
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, qd = lane & 3;  // the mma fragment coordinates
  const TokenKv tok = a.kv[t];  // copied from the host before the step, not written by a kernel
  const int pos = tok.position, ctx = pos + 1;
  const int span = (ctx + a.splits - 1) / a.splits;
  const int p0 = min(ctx, split * span), p1 = min(ctx, p0 + span);
  const int width = a.num_kv_heads * kHD;
  const __nv_bfloat16* kbase = KvRow(tok, a.layer, 0, 0, width) + kvh * kHD;
  const __nv_bfloat16* vbase = KvRow(tok, a.layer, 1, 0, width) + kvh * kHD;
  constexpr int kPieces = kHD / 8;  // 16-byte pieces of a row
  auto chunk_start = [&](int i) { return p0 + (warp + kWarps * i) * kChunk; };
  auto stage = [&](int i) {
    const int c0 = chunk_start(i);
    if (c0 < p1) {
      const int n = min(kChunk, p1 - c0), slot = i % R;
      for (int e = lane; e < kChunk * kPieces; e += 32) {
        const int r = e / kPieces, c = e % kPieces;
        if (r < n) {
          const int64_t off = static_cast<int64_t>(c0 + r) * width + c * 8;
          CpAsync16(&sm.k[warp][slot][r][c * 16], kbase + off);
          CpAsync16(&sm.v[warp][slot][r][c * 16], vbase + off);
        } else {  // past the split: no NaN patterns (P is 0 there, and 0 · NaN is not)
          *reinterpret_cast<uint4*>(&sm.k[warp][slot][r][c * 16]) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(&sm.v[warp][slot][r][c * 16]) = make_uint4(0, 0, 0, 0);
        }
      }
    }
    CpAsyncCommit();  // possibly empty: one group per chunk keeps the counting uniform
  };
  // The first chunks' rows were written by earlier steps (the token's own row is patched below).
#pragma unroll
  for (int i = 0; i < R - 1; ++i) stage(i);
  GridDependencyWait();
  AllowDependents();

  const float* row = a.qkv + static_cast<int64_t>(t) * (a.num_heads + 2 * a.num_kv_heads) * kHD;
  const float2* cs = a.rope + static_cast<int64_t>(pos) * (kHD / 2);
  const float scale = rsqrtf(static_cast<float>(kHD));
  for (int e = tid; e < 16 * kHD; e += kThreads) {
    const int h = e / kHD, d = e % kHD;
    sm.q[h][d] = __float2bfloat16(h < kG ? RopeAt<kHD>(row + (kvh * kG + h) * kHD, cs, d) * scale : 0.0f);
  }
  const bool owner = p0 < p1 && p1 == ctx;  // the split holding the token's own position
  if (owner && tid < kHD) {
    __nv_bfloat16 k, v;
    OwnKv<kHD>(row, cs, a.num_heads, a.num_kv_heads, kvh, tid, tok, a.layer, true, k, v);
    sm.own_k[tid] = k;
    sm.own_v[tid] = v;
  }
  __syncthreads();

  // Q as the scores' A fragments (m = heads, k = dims), in registers for every chunk.
  constexpr int kKS = kHD / 16;
  uint32_t qa[kKS][4];
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks) LdMatrixX4(qa[ks], &sm.q[lane & 15][ks * 16 + (lane >> 4) * 8]);
  // acc[nt] = O[head g][dims 8nt + 2qd, + 1] (c2, c3: the padding rows g + 8).
  constexpr int kNT = kHD / 8;
  float acc[kNT][4];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;  // head g's; l_run: this lane's share of the sum
  const int mi = lane >> 3, mr = lane & 7;  // ldmatrix: the matrix and row this lane addresses

  for (int i = 0; chunk_start(i) < p1; ++i) {
    stage(i + R - 1);  // its slot was last read in chunk i - 1, finished before the __syncwarp
    CpAsyncWaitGroup<R - 1>();
    __syncwarp();
    const int c0 = chunk_start(i), slot = i % R, n = min(kChunk, p1 - c0);
    unsigned char(*ks_rows)[kRowBytes<kHD>] = sm.k[warp][slot];
    unsigned char(*vs_rows)[kRowBytes<kHD>] = sm.v[warp][slot];
    if (owner && pos >= c0 && pos < c0 + n) {
      for (int d = lane; d < kHD; d += 32) {
        reinterpret_cast<__nv_bfloat16*>(ks_rows[pos - c0])[d] = sm.own_k[d];
        reinterpret_cast<__nv_bfloat16*>(vs_rows[pos - c0])[d] = sm.own_v[d];
      }
      __syncwarp();
    }
    // S = Q·Kᵀ for the chunk's two 8-position halves: s[h][0..1] = S[head g][8h + 2qd, + 1].
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
      uint32_t kb[4];  // (half 0, dims 0-7), (half 0, dims 8-15), (half 1, ...), (half 1, ...)
      LdMatrixX4(kb, &ks_rows[(mi >> 1) * 8 + mr][(ks * 16 + (mi & 1) * 8) * 2]);
      MmaBf16(s[0], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], kb[0], kb[1]);
      MmaBf16(s[1], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], kb[2], kb[3]);
    }
    float mx = -INFINITY;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (8 * h + 2 * qd + j >= n) s[h][j] = -INFINITY;
        mx = fmaxf(mx, s[h][j]);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run, mx);  // finite: the chunk holds a position
    const float rescale = __expf(m_run - m_new);
    m_run = m_new;
    float p[2][2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < 2; ++j) p[h][j] = __expf(s[h][j] - m_new);
    l_run = l_run * rescale + (p[0][0] + p[0][1] + p[1][0] + p[1][1]);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      acc[nt][0] *= rescale;
      acc[nt][1] *= rescale;
    }
    // P as A (m = heads, k = the chunk's positions): rows g + 8 are padding, 0.
    const uint32_t pa0 = PackBf16(p[0][0], p[0][1]), pa2 = PackBf16(p[1][0], p[1][1]);
#pragma unroll
    for (int nt = 0; nt < kNT; nt += 2) {
      uint32_t vb[4];  // .trans: (positions 0-7, dims 8nt..), (8-15, 8nt..), (0-7, 8nt + 8..), (8-15, ...)
      LdMatrixX4Trans(vb, &vs_rows[(mi & 1) * 8 + mr][(nt * 8 + (mi >> 1) * 8) * 2]);
      MmaBf16(acc[nt], pa0, 0u, pa2, 0u, vb[0], vb[1]);
      MmaBf16(acc[nt + 1], pa0, 0u, pa2, 0u, vb[2], vb[3]);
    }
    __syncwarp();  // the slot's reads are done before a later stage() refills it
  }
  CpAsyncWaitGroup<0>();  // no copy outlives the block (the trailing groups are empty)

  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  if (g < kG) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      sm.o[warp][g][nt * 8 + 2 * qd] = acc[nt][0];
      sm.o[warp][g][nt * 8 + 2 * qd + 1] = acc[nt][1];
    }
    if (qd == 0) {
      sm.m[warp][g] = m_run;  // -inf and 0 for a warp without chunks
      sm.l[warp][g] = l_run;
    }
  }
  __syncthreads();
  const int head0 = kvh * kG;
  float* parts0 = a.scratch + (static_cast<int64_t>(t) * a.num_heads + head0) * a.splits * (kHD + 2);
  for (int e = tid; e < kG * kHD; e += kThreads) {
    const int h = e / kHD, d = e % kHD;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm.m[w][h]);
    float o = 0.0f, l = 0.0f;
    if (m != -INFINITY) {  // -inf: an empty split, its sums 0
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = __expf(sm.m[w][h] - m);
        o += sm.o[w][h][d] * f;
        l += sm.l[w][h] * f;
      }
    }
    if (a.splits == 1) {
      a.out[(static_cast<int64_t>(t) * a.num_heads + head0 + h) * kHD + d] = __float2bfloat16(o / l);
    } else {
      float* part = parts0 + (static_cast<int64_t>(h) * a.splits + split) * (kHD + 2);
      part[d] = o;
      if (d == 0) {
        part[kHD] = m;
        part[kHD + 1] = l;
      }
    }
  }
  if (a.splits == 1) return;
  ArriveAndMerge<kHD, kG, kThreads>(a, t, kvh, tid, sm.last, BlockSync{});
}

template <int kHD, int kG>
void LaunchT(const AttentionItemArgs& a, int tokens, cudaStream_t stream) {
  // Four chunks a warp at head_dim 64 with one split (two blocks a multiprocessor); two with
  // several splits (more blocks resident) or head_dim 128.
  if (kHD == 64 && a.splits == 1) {
    LaunchKernel(AttentionWarpKernel<kHD, kG, 4>, dim3(tokens, a.num_kv_heads, a.splits), dim3(kThreads),
                 sizeof(WarpSmem<kHD, kG, 4>), stream, a);
  } else {
    LaunchKernel(AttentionWarpKernel<kHD, kG, 2>, dim3(tokens, a.num_kv_heads, a.splits), dim3(kThreads),
                 sizeof(WarpSmem<kHD, kG, 2>), stream, a);
  }
}

// UM_CUDA_ATTN_STAGED unless a test overrides it: 0 off, 1 (the default) for steps of at least
// half as many (token, kv head) pairs as multiprocessors, 2 for every decode step.
EnvKnob staged_mode("UM_CUDA_ATTN_STAGED", 1);

}  // namespace

void SetAttentionStagedForTesting(int mode) { staged_mode.Override(mode); }

bool LaunchAttentionStaged(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                           int num_kv_heads, int head_dim, int layer, int splits, float* scratch, int* counters,
                           __nv_bfloat16* out, cudaStream_t stream) {
  const int mode = staged_mode.Get();
  if (rope == nullptr || mode == 0) return false;
  // The two rules below were measured with the ring kernel this one replaced. With fewer (token,
  // kv head) pairs than half the multiprocessors the split kernel was faster than that kernel
  // (H200, 2026-11-28, decode step with 4 kv heads: 16 tokens 653 against 632 us; 32 tokens 682
  // against 749; 64 tokens 828 against 910; 256 tokens 1564 against 1818).
  if (mode == 1 && 2 * static_cast<int64_t>(tokens) * num_kv_heads < SmCount()) return false;
  // One split where the (token, kv head) pairs alone give every multiprocessor a block: the merge
  // then costs more than the parallelism it buys (H200, 2026-12-04, graph us: batch 64, 256 pairs,
  // 782 with 2 splits against 742 with 1; batch 32, 128 pairs, 647 with 3 against 658 with 2).
  if (static_cast<int64_t>(tokens) * num_kv_heads >= SmCount()) splits = 1;
  const AttentionItemArgs a{qkv, kv, rope, num_heads, num_kv_heads, layer, splits, scratch, counters, out};
  return DispatchHeadDimAndGroup<64, 128>(head_dim, num_heads / num_kv_heads, [&](auto hd, auto g) {
    LaunchT<decltype(hd)::value, decltype(g)::value>(a, tokens, stream);
  });
}

}  // namespace ultramem::cuda
