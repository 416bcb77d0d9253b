// The decode attention for wider steps (attention.cuh, LaunchAttentionStaged): one block of 128
// threads per (token, kv head, split), like the fast kernel, but the split's K and V rows reach
// shared memory through a ring of S tiles of 64 positions filled by cp.async (S = 2 by default:
// one tile in flight while the block computes on the other), instead of one K row and a few V
// rows per thread in registers. The first tile is requested before the PDL wait (rows written by
// earlier steps; the token's own row is replaced after it lands). Scores and P·V run on the tensor
// cores with bf16 q and weights (fp32 sums), the online softmax in fp32 a warp per head; the
// splits merge through scratch and the arrival counter, the last block of a (token, kv head)
// summing them. Steps with one split (the pairs alone fill the multiprocessors) take the per-warp
// variant below instead: each warp its own ring and online softmax, no block barrier in the loop.

#include "compute_node/cuda/attention.cuh"
#include "compute_node/cuda/attention_item.cuh"
#include "compute_node/cuda/bulk_copy.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/skinny_ops.cuh"

namespace ultramem::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileP = 64;  // positions per staged tile: 16 per warp for the scores
constexpr int kN = 8;       // heads of the group padded to the tensor-core step's N

template <int kHD>
constexpr int kRowBytes = kHD * 2 + 16;  // padded: the 8 rows an ldmatrix reads hit distinct banks

// Tiles in the ring (UM_CUDA_ATTN_STAGES, 2..4, or 2 by default).
int Stages() {
  static const int from_env = EnvInt("UM_CUDA_ATTN_STAGES", 0);
  return from_env >= 2 && from_env <= 4 ? from_env : 2;
}

template <int kHD, int kG, int S>
struct StagedSmem {
  alignas(16) unsigned char k[S][kTileP][kRowBytes<kHD>];
  alignas(16) unsigned char v[S][kTileP][kRowBytes<kHD>];
  alignas(16) __nv_bfloat16 q[kN][kHD + 8];      // rotated, pre-scaled; heads past the group zero
  alignas(16) __nv_bfloat16 p[kN][kTileP + 8];   // the tile's softmax weights; heads past the group zero
  float s[kG][kTileP];                           // scores, then exponentials
  float m_run[kG], l_run[kG], rescale[kN];
  int last;
};

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
__device__ __forceinline__ uint32_t Pair(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Scores S[position, head] = K·Qᵀ and the output Oᵀ[dim, head] = Vᵀ·P on the tensor cores
// (m16n8k16, bf16 operands, fp32 sums; the group's heads padded to 8): warp w scores positions
// 16w .. 16w + 15 of each tile and owns dims w·kHD/4 .. of the output, so no cross-warp sum.
template <int kHD, int kG, int S>
__global__ void __launch_bounds__(kThreads) AttentionStagedKernel(AttentionItemArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& sm = *reinterpret_cast<StagedSmem<kHD, kG, S>*>(smem_raw);
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, qd = lane & 3;  // the mma fragment coordinates
  const TokenKv tok = a.kv[t];  // copied from the host before the step, not written by a kernel
  const int pos = tok.position, ctx = pos + 1;
  const int chunk = (ctx + a.splits - 1) / a.splits;
  const int p0 = min(ctx, split * chunk), p1 = min(ctx, p0 + chunk);
  const int width = a.num_kv_heads * kHD;
  const __nv_bfloat16* kbase = KvRow(tok, a.layer, 0, 0, width) + kvh * kHD;
  const __nv_bfloat16* vbase = KvRow(tok, a.layer, 1, 0, width) + kvh * kHD;
  constexpr int kChunks = kHD / 8;  // 16-byte pieces of a row
  auto stage = [&](int tile, int buf) {
    if (tile < p1) {
      const int n = min(kTileP, p1 - tile);
      for (int i = tid; i < kTileP * kChunks; i += kThreads) {
        const int r = i / kChunks, c = i % kChunks;
        if (r < n) {
          const int64_t off = static_cast<int64_t>(tile + r) * width + c * 8;
          CpAsync16(&sm.k[buf][r][c * 16], kbase + off);
          CpAsync16(&sm.v[buf][r][c * 16], vbase + off);
        } else {  // past the split: weight 0, and the V rows must not hold NaN patterns
          *reinterpret_cast<uint4*>(&sm.v[buf][r][c * 16]) = make_uint4(0, 0, 0, 0);
        }
      }
    }
    CpAsyncCommit();  // possibly empty: one group per tile slot keeps the counting uniform
  };
  // The first tiles' rows were written by earlier steps (the token's own row is replaced below).
#pragma unroll
  for (int i = 0; i < S - 1; ++i) stage(p0 + i * kTileP, i);
  GridDependencyWait();
  AllowDependents();

  const float* row = a.qkv + static_cast<int64_t>(t) * (a.num_heads + 2 * a.num_kv_heads) * kHD;
  const float2* cs = a.rope + static_cast<int64_t>(pos) * (kHD / 2);
  const float scale = rsqrtf(static_cast<float>(kHD));
  for (int e = tid; e < kN * kHD; e += kThreads) {
    const int h = e / kHD, d = e % kHD;
    sm.q[h][d] = __float2bfloat16(h < kG ? RopeAt<kHD>(row + (kvh * kG + h) * kHD, cs, d) * scale : 0.0f);
  }
  for (int e = kG * kTileP + tid; e < kN * kTileP; e += kThreads) sm.p[e / kTileP][e % kTileP] = __float2bfloat16(0.0f);
  const bool owner = p0 < p1 && p1 == ctx;  // the split holding the token's own position
  __nv_bfloat16 own_k = __float2bfloat16(0.0f), own_v = own_k;
  if (owner && tid < kHD) OwnKv<kHD>(row, cs, a.num_heads, a.num_kv_heads, kvh, tid, tok, a.layer, true, own_k, own_v);
  if (tid < kG) {
    sm.m_run[tid] = -INFINITY;
    sm.l_run[tid] = 0.0f;
  }
  if (tid >= kG && tid < kN) sm.rescale[tid] = 1.0f;
  __syncthreads();

  // q as the scores' B fragments (k = dims, n = heads), kept in registers for every tile.
  constexpr int kKS = kHD / 16;  // 16-dim steps
  uint32_t qf[kKS][2];
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks) {
    qf[ks][0] = Pair(&sm.q[g][ks * 16 + 2 * qd]);
    qf[ks][1] = Pair(&sm.q[g][ks * 16 + 8 + 2 * qd]);
  }
  // The output: warp w owns dims w·kHD/4 .. + kHD/4 (kMT tiles of 16) for the 8 (padded) heads.
  constexpr int kMT = kHD / 64;
  const int dim0 = warp * (kHD / 4);
  float acc[kMT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.0f;
  const int lrow = lane & 15, lcol = (lane >> 4) * 8;           // ldmatrix address of the scores' A
  const int trow = (lane >> 4) * 8 + (lane & 7), tcol = ((lane >> 3) & 1) * 8;  // and of Vᵀ's

  for (int tile = p0, it = 0; tile < p1; tile += kTileP, ++it) {
    const int buf = it % S;
    // The slot of the tile S - 1 ahead was released by the barrier that ended the last tile.
    stage(tile + (S - 1) * kTileP, (it + S - 1) % S);
    CpAsyncWaitGroup<S - 1>();
    __syncthreads();  // this tile and the zeroed rows are visible
    const int n = min(kTileP, p1 - tile);
    if (owner && pos >= tile && pos < tile + n) {
      if (tid < kHD) {
        reinterpret_cast<__nv_bfloat16*>(sm.k[buf][pos - tile])[tid] = own_k;
        reinterpret_cast<__nv_bfloat16*>(sm.v[buf][pos - tile])[tid] = own_v;
      }
      __syncthreads();
    }
    {
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int ks = 0; ks < kKS; ++ks) {
        uint32_t af[4];
        LdMatrixX4(af, &sm.k[buf][warp * 16 + lrow][(ks * 16 + lcol) * 2]);
        MmaBf16(c, af[0], af[1], af[2], af[3], qf[ks][0], qf[ks][1]);
      }
      // c = (position g, heads 2qd, 2qd + 1), (position g + 8, the same heads).
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = 2 * qd + (i & 1), p = warp * 16 + g + (i >> 1) * 8;
        if (h < kG) sm.s[h][p] = p < n ? c[i] : -INFINITY;
      }
    }
    __syncthreads();
    for (int h = warp; h < kG; h += kWarps) {
      const SoftmaxTile st = WarpSoftmaxTile<kTileP>(sm.s[h], sm.m_run[h], lane);  // m_new finite
#pragma unroll
      for (int j = lane; j < kTileP; j += 32) sm.p[h][j] = __float2bfloat16(sm.s[h][j]);
      if (lane == 0) FoldSoftmaxTile(st, sm.m_run[h], sm.l_run[h], sm.rescale[h]);
    }
    __syncthreads();
    const float r0 = sm.rescale[2 * qd], r1 = sm.rescale[2 * qd + 1];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      acc[mt][0] *= r0;
      acc[mt][1] *= r1;
      acc[mt][2] *= r0;
      acc[mt][3] *= r1;
    }
#pragma unroll
    for (int ks = 0; ks < kTileP / 16; ++ks) {
      const uint32_t b0 = Pair(&sm.p[g][ks * 16 + 2 * qd]), b1 = Pair(&sm.p[g][ks * 16 + 8 + 2 * qd]);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        uint32_t af[4];
        LdMatrixX4Trans(af, &sm.v[buf][ks * 16 + trow][(dim0 + mt * 16 + tcol) * 2]);
        MmaBf16(acc[mt], af[0], af[1], af[2], af[3], b0, b1);
      }
    }
    __syncthreads();  // this tile's slot and the weights are free
  }
  CpAsyncWaitGroup<0>();  // no copy outlives the block (the trailing groups are empty)

  // acc[mt] = (dim dim0 + 16mt + g, heads 2qd, 2qd + 1), (dim + 8, the same heads).
  const int head0 = kvh * kG;
  if (a.splits == 1) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = 2 * qd + (i & 1), d = dim0 + mt * 16 + g + (i >> 1) * 8;
        if (h < kG) {
          a.out[(static_cast<int64_t>(t) * a.num_heads + head0 + h) * kHD + d] = __float2bfloat16(acc[mt][i] / sm.l_run[h]);
        }
      }
    return;
  }
  // Partial: [t][head][split][hd + 2] = acc (unnormalized), m, l; the last block merges.
  float* parts0 = a.scratch + (static_cast<int64_t>(t) * a.num_heads + head0) * a.splits * (kHD + 2);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = 2 * qd + (i & 1), d = dim0 + mt * 16 + g + (i >> 1) * 8;
      if (h < kG) parts0[(static_cast<int64_t>(h) * a.splits + split) * (kHD + 2) + d] = acc[mt][i];
    }
  if (tid < kG) {
    float* part = parts0 + (static_cast<int64_t>(tid) * a.splits + split) * (kHD + 2);
    part[kHD] = sm.m_run[tid];
    part[kHD + 1] = sm.l_run[tid];
  }
  ArriveAndMerge<kHD, kG, kThreads>(a, t, kvh, tid, sm.last, BlockSync{});
}

// The per-warp variant (steps with one split; UM_CUDA_ATTN_WARP): the block's four warps each stream
// their own chunks of 16 positions (warp w takes chunks w, w + 4, ... of the split) through a
// private cp.async ring, with the heads as the tensor-core step's M (the group padded to 16 rows):
// S = Q·Kᵀ leaves each head's scores in the lanes that hold them as P·V's A fragment, so the
// online softmax runs on registers (quad shuffles) and the loop has no block barrier. The warps'
// (max, sum, output) merge once at the end through shared memory.
constexpr int kChunk = 16;

template <int kHD, int kG>
struct WarpSmem {
  static constexpr int kRing = kHD == 64 ? 4 : 2;  // chunks in flight per warp
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

template <int kHD, int kG>
__global__ void __launch_bounds__(kThreads) AttentionWarpKernel(AttentionItemArgs a) {
  static_assert(kG <= 8, "the group's heads are rows g of the m16 tile");
  using Smem = WarpSmem<kHD, kG>;
  constexpr int R = Smem::kRing;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& sm = *reinterpret_cast<Smem*>(smem_raw);
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, qd = lane & 3;
  const TokenKv tok = a.kv[t];
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

template <int kHD, int kG, int S>
void LaunchS(const AttentionItemArgs& a, int tokens, cudaStream_t stream) {
  const size_t smem = sizeof(StagedSmem<kHD, kG, S>);
  LaunchKernel(AttentionStagedKernel<kHD, kG, S>, dim3(tokens, a.num_kv_heads, a.splits), dim3(kThreads), smem,
               stream, a);
}

// UM_CUDA_ATTN_WARP unless a test overrides it: 1 (the default) the per-warp kernel where the step
// has one split, 0 never, 2 for every launch of the staged kernels. With several splits its
// 80 KB blocks fit two a multiprocessor against the ring kernel's five (H200, 2026-12-04, graph us:
// batch 32 697 against 644); with one it won (48: 766 -> 719, 64: 735 -> 723, 256: 1375 -> 1368).
EnvKnob warp_mode("UM_CUDA_ATTN_WARP", 1);

template <int kHD, int kG>
void LaunchT(const AttentionItemArgs& a, int tokens, cudaStream_t stream) {
  const int w = warp_mode.Get();
  if (w == 2 || (w == 1 && a.splits == 1)) {
    LaunchKernel(AttentionWarpKernel<kHD, kG>, dim3(tokens, a.num_kv_heads, a.splits), dim3(kThreads),
                 sizeof(WarpSmem<kHD, kG>), stream, a);
    return;
  }
  switch (Stages()) {
    case 2: return LaunchS<kHD, kG, 2>(a, tokens, stream);
    case 3: return LaunchS<kHD, kG, 3>(a, tokens, stream);
    default: return LaunchS<kHD, kG, 4>(a, tokens, stream);
  }
}

// UM_CUDA_ATTN_STAGED unless a test overrides it: 0 off, 1 (the default) for steps of at least
// half as many (token, kv head) pairs as multiprocessors, 2 for every decode step.
EnvKnob staged_mode("UM_CUDA_ATTN_STAGED", 1);

}  // namespace

void SetAttentionStagedForTesting(int mode) { staged_mode.Override(mode); }
void SetAttentionWarpForTesting(int mode) { warp_mode.Override(mode); }

bool LaunchAttentionStaged(float* qkv, const TokenKv* kv, const float2* rope, int tokens, int num_heads,
                           int num_kv_heads, int head_dim, int layer, int splits, float* scratch, int* counters,
                           __nv_bfloat16* out, cudaStream_t stream) {
  const int mode = staged_mode.Get();
  if (rope == nullptr || mode == 0) return false;
  // With fewer (token, kv head) pairs than half the multiprocessors the split kernel was faster
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
