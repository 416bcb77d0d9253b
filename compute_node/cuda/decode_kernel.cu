// Implementation of decode_kernel.cuh.
//
// Block layout: 8 consumer warps (2 attention groups of 128 threads) and 1 producer warp. Shared
// memory: the slots' full/empty mbarriers, kSlots weight slots of kSlotBytes, then a work area
// holding either the phase's input rows as bf16 (normalized x, or the attention/SwiGLU/memory
// output) or the attention groups' AttentionItemSmem.
//
// Memory ordering: everything a phase reads that another block wrote in the same launch (x, qkv,
// the attention output, act) is read with ld.global.cg (L2; L1 is not coherent across SMs), after
// a grid barrier whose arrival is a release and whose wait is an acquire at GPU scope, each
// bracketed by the consumers' named barrier (as CUTLASS's GenericBarrier). Loads after a barrier
// are issued in batches before their results are used: every dependent L2 round trip costs about
// as much as a phase's share of the weights.
#include "compute_node/cuda/decode_kernel.cuh"

#include <algorithm>

#include "compute_node/cuda/attention_item.cuh"
#include "compute_node/cuda/bulk_copy.cuh"
#include "compute_node/cuda/skinny_ops.cuh"
#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kConsumerWarps = 8;
constexpr int kConsumerThreads = kConsumerWarps * 32;
constexpr int kThreads = kConsumerThreads + 32;  // + the producer warp
constexpr int kGroups = kConsumerThreads / kFastThreads;
constexpr int kSlots = 6;
constexpr int kSlotBytes = 24 * 1024;
constexpr int kHeaderBytes = 128;  // 2 · kSlots mbarriers, padded
constexpr int kMaxMerge = 1024;    // tokens · heads · splits the attention merge handles

// The attention shapes compiled into the kernel (head_dim, group).
constexpr int kShapes[][2] = {{32, 4}, {64, 1}, {64, 4}};  // head_dim 128 spills at 120 registers

// Per-group attention scratch, padded so that every group's float4 reads stay aligned.
template <int kHD, int kG>
constexpr size_t kGroupStride = (sizeof(AttentionItemSmem<kHD, kG>) + 127) / 128 * 128;

__device__ __forceinline__ void ConsumerSync() {
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumerThreads) : "memory");
}
struct GroupSync {
  int id;
  __device__ void operator()() const { asm volatile("bar.sync %0, 128;" ::"r"(id) : "memory"); }
};
struct NoWait {
  __device__ void operator()() const {}
};

__device__ __forceinline__ void GridSync(unsigned long long* bar) {
  ConsumerSync();
  if (threadIdx.x == 0) {
    unsigned long long old;
    asm volatile("atom.add.release.gpu.u64 %0, [%1], 1;" : "=l"(old) : "l"(bar) : "memory");
    const unsigned long long target = (old / gridDim.x + 1) * gridDim.x;
    unsigned long long now;
    do {
      asm volatile("ld.acquire.gpu.u64 %0, [%1];" : "=l"(now) : "l"(bar) : "memory");
    } while (now < target);
  }
  ConsumerSync();
}

__device__ __forceinline__ long long Now() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return static_cast<long long>(ns);
}
// Timestamps (ns) of block 0 at phase p: 0 before the barrier, 1 after it, 2 input staged, 3 done;
// 4 holds the time its thread 0 waited for weight slots.
__device__ __forceinline__ void Trace(const DecodeKernelArgs& a, int p, int point) {
  if (a.trace == nullptr || blockIdx.x != 0 || threadIdx.x != 0) return;
  a.trace[p * kTracePoints + point] = Now();
}

__device__ __forceinline__ bool IsGemv(DecodePhaseKind k) { return k != DecodePhaseKind::kAttention; }

// This block's units (rows; gate/up: row pairs) of a GEMV phase and how many fit one slot.
struct Share {
  int u0, u1, per_slot, rows_per_unit;
};
__device__ __forceinline__ Share ShareOf(const DecodePhase& ph) {
  Share s;
  s.rows_per_unit = ph.kind == DecodePhaseKind::kGateUp ? 2 : 1;
  s.u0 = static_cast<int>(static_cast<long long>(blockIdx.x) * ph.out_dim / gridDim.x);
  s.u1 = static_cast<int>(static_cast<long long>(blockIdx.x + 1) * ph.out_dim / gridDim.x);
  s.per_slot = kSlotBytes / (s.rows_per_unit * ph.in_dim * 2);
  return s;
}

// The producer (one thread): every GEMV chunk of this block, in the consumers' order.
__device__ void Produce(const DecodeKernelArgs& a, unsigned char* stage, uint64_t* full, uint64_t* empty) {
  int slot = 0;
  uint32_t round = 0;
  for (int p = a.begin; p < a.end; ++p) {
    const DecodePhase ph = a.phases[p];
    if (!IsGemv(ph.kind)) continue;
    const Share s = ShareOf(ph);
    const size_t row_bytes = static_cast<size_t>(ph.in_dim) * 2;
    for (int u = s.u0; u < s.u1; u += s.per_slot) {
      const int n = min(s.per_slot, s.u1 - u);
      MbarWait(empty + slot, (round & 1) ^ 1);
      const uint32_t bytes = static_cast<uint32_t>(n * row_bytes);
      MbarExpectTx(full + slot, bytes * s.rows_per_unit);
      unsigned char* dst = stage + static_cast<size_t>(slot) * kSlotBytes;
      BulkLoad(dst, ph.w + static_cast<size_t>(u) * ph.in_dim, bytes, full + slot);
      if (s.rows_per_unit == 2) {
        BulkLoad(dst + bytes, ph.w + static_cast<size_t>(ph.out_dim + u) * ph.in_dim, bytes, full + slot);
      }
      if (++slot == kSlots) {
        slot = 0;
        ++round;
      }
    }
  }
}

// The phase's input rows into xs [T][in_dim] bf16: the RMSNorm of x (qkv, gate/up; also written
// to normed_out by block 0), else a copy of ph.x. Loads go out kBatch at a time per thread.
constexpr int kBatch = 8;

// The attention output [T][n_h·hd] into xs, merging the splits' partials (scratch, [t][head]
// [split][hd + 2] = unnormalized sum, m, l): the split weights first (one load round), then every
// output pair from all splits at once (one more).
__device__ void StageAttention(const DecodeKernelArgs& a, bf16* xs, float* mw, float* ml) {
  const int tid = threadIdx.x;
  const int S = a.splits, hd = a.head_dim, stride = hd + 2;
  const int n = a.tokens * a.num_heads * S;
  for (int e = tid; e < n; e += kConsumerThreads) {
    mw[e] = __ldcg(a.scratch + static_cast<size_t>(e) * stride + hd);
    ml[e] = __ldcg(a.scratch + static_cast<size_t>(e) * stride + hd + 1);
  }
  ConsumerSync();
  float wl[kMaxMerge / kConsumerThreads];
#pragma unroll
  for (int i = 0; i < kMaxMerge / kConsumerThreads; ++i) {
    const int e = tid + i * kConsumerThreads;
    if (e >= n) break;
    const float* m = mw + (e / S) * S;
    const float* l = ml + (e / S) * S;
    float mx = -INFINITY;
    for (int j = 0; j < S; ++j) mx = fmaxf(mx, m[j]);
    float sum = 0.0f;
    for (int j = 0; j < S; ++j) sum += l[j] * __expf(m[j] - mx);
    wl[i] = __expf(mw[e] - mx) / sum;  // 0 for an empty split
  }
  ConsumerSync();
#pragma unroll
  for (int i = 0; i < kMaxMerge / kConsumerThreads; ++i) {
    const int e = tid + i * kConsumerThreads;
    if (e >= n) break;
    mw[e] = wl[i];
  }
  ConsumerSync();
  const int pairs = hd / 2, total = a.tokens * a.num_heads * pairs;
  constexpr int kItems = 2;
  for (int base = tid; base < total; base += kConsumerThreads * kItems) {
    float2 acc[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) acc[i] = make_float2(0.0f, 0.0f);
    // All 16 loads of an item issued at once (splits past S re-read split S - 1 with weight 0).
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int jj = j < S ? j : S - 1;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const int e = min(base + i * kConsumerThreads, total - 1);
        {
          const int th = e / pairs, dp = e % pairs;  // th = t · n_h + head
          const float w = j < S ? mw[th * S + jj] : 0.0f;
          const float2 v = __ldcg(reinterpret_cast<const float2*>(a.scratch + (static_cast<size_t>(th) * S + jj) * stride) + dp);
          acc[i].x += w * v.x;
          acc[i].y += w * v.y;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int e = base + i * kConsumerThreads;
      if (e < total) {
        const int th = e / pairs, dp = e % pairs;
        reinterpret_cast<__nv_bfloat162*>(xs + th * hd)[dp] = __floats2bfloat162_rn(acc[i].x, acc[i].y);
      }
    }
  }
}

template <int kT>
__device__ void StageInput(const DecodeKernelArgs& a, const DecodePhase& ph, bf16* xs,
                           float (*red)[kT], float* scale, float* mw, float* ml) {
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int K = ph.in_dim;
  if (ph.kind == DecodePhaseKind::kWo) return StageAttention(a, xs, mw, ml);
  if (ph.norm_weight == nullptr) {
    const int chunks = K / 8, total = a.tokens * chunks;
    for (int base = tid; base < total; base += kConsumerThreads * kBatch) {
      uint4 v[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = base + i * kConsumerThreads;
        if (e < total) {
          v[i] = __ldcg(reinterpret_cast<const uint4*>(ph.x + static_cast<size_t>(e / chunks) * K) + e % chunks);
        }
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = base + i * kConsumerThreads;
        if (e < total) reinterpret_cast<uint4*>(xs + (e / chunks) * K)[e % chunks] = v[i];
      }
    }
    return;
  }
  const int quads = K / 4;
  float ss[kT];
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    ss[t] = 0.0f;
    if (t < a.tokens) {
      const float4* row = reinterpret_cast<const float4*>(a.x + static_cast<size_t>(t) * a.hidden);
      for (int c = tid; c < quads; c += kConsumerThreads) {
        const float4 v = __ldcg(row + c);
        ss[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kT; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss[t] += __shfl_xor_sync(0xffffffffu, ss[t], o);
    if (lane == 0) red[warp][t] = ss[t];
  }
  ConsumerSync();
  if (tid < kT) {
    float total = 0.0f;
    for (int w = 0; w < kConsumerWarps; ++w) total += red[w][tid];
    scale[tid] = rsqrtf(total / static_cast<float>(K) + a.eps);
  }
  ConsumerSync();
  const int total = a.tokens * quads;
  const bool write_u = ph.normed_out != nullptr && blockIdx.x == 0;
  for (int base = tid; base < total; base += kConsumerThreads * kBatch) {
    float4 v[kBatch], w[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = base + i * kConsumerThreads;
      if (e < total) {
        v[i] = __ldcg(reinterpret_cast<const float4*>(a.x + static_cast<size_t>(e / quads) * a.hidden) + e % quads);
        w[i] = __ldg(reinterpret_cast<const float4*>(ph.norm_weight) + e % quads);
      }
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = base + i * kConsumerThreads;
      if (e >= total) continue;
      const int t = e / quads, c = e % quads;
      const float sc = scale[t];
      __nv_bfloat162 lo = __floats2bfloat162_rn(v[i].x * sc * w[i].x, v[i].y * sc * w[i].y);
      __nv_bfloat162 hi = __floats2bfloat162_rn(v[i].z * sc * w[i].z, v[i].w * sc * w[i].w);
      uint2 packed;
      packed.x = *reinterpret_cast<uint32_t*>(&lo);
      packed.y = *reinterpret_cast<uint32_t*>(&hi);
      reinterpret_cast<uint2*>(xs + t * K)[c] = packed;
      if (write_u) reinterpret_cast<uint2*>(ph.normed_out + static_cast<size_t>(t) * K)[c] = packed;
    }
  }
}

// The rows of one slot: warp w takes rows w, w + 8, ...; lanes split the row in 8-element pieces.
template <int kT>
__device__ void ComputeSlot(const DecodeKernelArgs& a, const DecodePhase& ph, const bf16* xs,
                            const bf16* w, int u, int n) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int K = ph.in_dim, chunks = K / 8;
  const bool pair = ph.kind == DecodePhaseKind::kGateUp;
  for (int r = warp; r < n; r += kConsumerWarps) {
    const uint4* wa = reinterpret_cast<const uint4*>(w + static_cast<size_t>(r) * K);
    const uint4* wb = reinterpret_cast<const uint4*>(w + static_cast<size_t>(n + r) * K);
    float acc[2][kT];
#pragma unroll
    for (int t = 0; t < kT; ++t) acc[0][t] = acc[1][t] = 0.0f;
    for (int c = lane; c < chunks; c += 32) {
      const uint4 va = wa[c];
      const uint4 vb = pair ? wb[c] : va;
#pragma unroll
      for (int t = 0; t < kT; ++t) {
        if (t < a.tokens) {
          const uint4 xv = reinterpret_cast<const uint4*>(xs + t * K)[c];
          acc[0][t] += Dot8(va, xv);
          if (pair) acc[1][t] += Dot8(vb, xv);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kT; ++t) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        acc[0][t] += __shfl_xor_sync(0xffffffffu, acc[0][t], o);
        if (pair) acc[1][t] += __shfl_xor_sync(0xffffffffu, acc[1][t], o);
      }
    }
    // Every lane holds the sums: lane t writes token t (one round trip for all tokens).
    float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      if (lane == t) {
        v0 = acc[0][t];
        v1 = acc[1][t];
      }
    }
    if (lane >= a.tokens) continue;
    const int row = u + r;
    switch (ph.kind) {
      case DecodePhaseKind::kQkv:
        a.qkv[static_cast<size_t>(lane) * ph.out_dim + row] = v0;
        break;
      case DecodePhaseKind::kGateUp:
        a.act[static_cast<size_t>(lane) * ph.out_dim + row] = __float2bfloat16(v0 / (1.0f + __expf(-v0)) * v1);
        break;
      default: {
        float* dst = a.x + static_cast<size_t>(lane) * a.hidden + row;
        *dst = __ldcg(dst) + v0;
      }
    }
  }
}

template <int kHD, int kG>
__device__ void AttentionPhase(const DecodeKernelArgs& a, int layer, unsigned char* work) {
  const int group = threadIdx.x / kFastThreads, gtid = threadIdx.x % kFastThreads;
  auto* sm = reinterpret_cast<AttentionItemSmem<kHD, kG>*>(work + group * kGroupStride<kHD, kG>);
  const AttentionItemArgs args{a.qkv,     a.kv,      a.rope,     a.num_heads, a.num_kv_heads, layer,
                               a.splits,  a.scratch, nullptr,    nullptr,     true};
  const int per_token = a.num_kv_heads * a.splits;
  const int items = a.tokens * per_token;
  for (int i = blockIdx.x + gridDim.x * group; i < items; i += gridDim.x * kGroups) {
    const int t = i / per_token, rem = i % per_token;
    AttentionItem<kHD, kG>(*sm, args, t, rem / a.splits, rem % a.splits, gtid, GroupSync{2 + group},
                           NoWait{});
  }
}

__device__ void Attention(const DecodeKernelArgs& a, int layer, unsigned char* work) {
  const int g = a.num_heads / a.num_kv_heads;
  if (a.head_dim == 32 && g == 4) return AttentionPhase<32, 4>(a, layer, work);
  if (a.head_dim == 64 && g == 1) return AttentionPhase<64, 1>(a, layer, work);
  if (a.head_dim == 64 && g == 4) return AttentionPhase<64, 4>(a, layer, work);
}

template <int kT>
__global__ void __launch_bounds__(kThreads, 1) DecodeKernel(DecodeKernelArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kSlots;
  unsigned char* stage = smem + kHeaderBytes;
  unsigned char* work = stage + kSlots * kSlotBytes;
  __shared__ float red[kConsumerWarps][kT];
  __shared__ float scale[kT];
  __shared__ float merge_w[kMaxMerge], merge_l[kMaxMerge];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kSlots; ++s) {
      MbarInit(full + s, 1);
      MbarInit(empty + s, kConsumerWarps);
    }
    MbarInitFence();
  }
  __syncthreads();  // the last block-wide barrier: the producer warp leaves the consumers here
  if (warp == kConsumerWarps) {
    if (lane == 0) Produce(a, stage, full, empty);
    return;
  }
  bf16* xs = reinterpret_cast<bf16*>(work);
  int slot = 0;
  uint32_t round = 0;
  for (int p = a.begin; p < a.end; ++p) {
    const DecodePhase ph = a.phases[p];
    Trace(a, p, 0);
    if (p > a.begin) GridSync(a.barrier);
    Trace(a, p, 1);
    if (!IsGemv(ph.kind)) {
      Attention(a, ph.layer, work);
      ConsumerSync();
      Trace(a, p, 3);
      continue;
    }
    StageInput<kT>(a, ph, xs, red, scale, merge_w, merge_l);
    ConsumerSync();
    Trace(a, p, 2);
    const Share s = ShareOf(ph);
    long long waited = 0;
    for (int u = s.u0; u < s.u1; u += s.per_slot) {
      const int n = min(s.per_slot, s.u1 - u);
      const long long w0 = a.trace != nullptr ? Now() : 0;
      MbarWait(full + slot, round & 1);
      if (a.trace != nullptr) waited += Now() - w0;
      ComputeSlot<kT>(a, ph, xs, reinterpret_cast<const bf16*>(stage + static_cast<size_t>(slot) * kSlotBytes), u, n);
      __syncwarp();
      if (lane == 0) MbarArrive(empty + slot);
      if (++slot == kSlots) {
        slot = 0;
        ++round;
      }
    }
    ConsumerSync();
    Trace(a, p, 3);
    if (a.trace != nullptr && blockIdx.x == 0 && threadIdx.x == 0) a.trace[p * kTracePoints + 4] = waited;
  }
}

size_t AttentionWorkBytes(int head_dim, int group) {
  size_t per = 0;
  if (head_dim == 32 && group == 4) per = kGroupStride<32, 4>;
  if (head_dim == 64 && group == 1) per = kGroupStride<64, 1>;
  if (head_dim == 64 && group == 4) per = kGroupStride<64, 4>;
  return per * kGroups;
}

size_t SmemBytes(int tokens, int head_dim, int group, int max_in_dim) {
  const int t = tokens <= 1 ? 1 : tokens <= 2 ? 2 : tokens <= 4 ? 4 : 8;
  const size_t xs = static_cast<size_t>(t) * max_in_dim * 2;
  return kHeaderBytes + static_cast<size_t>(kSlots) * kSlotBytes +
         std::max(xs, AttentionWorkBytes(head_dim, group));
}

template <int kT>
void Launch(const DecodeKernelArgs& a, size_t smem, cudaStream_t stream) {
  AllowDynamicSmem(reinterpret_cast<const void*>(DecodeKernel<kT>), smem);
  DecodeKernel<kT><<<a.grid, kThreads, smem, stream>>>(a);
}

template <int kT>
size_t StaticSmem() {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, DecodeKernel<kT>) == cudaSuccess ? attr.sharedSizeBytes : size_t{64} << 10;
}

}  // namespace

int DecodeKernelSplits(int tokens, int num_heads, int num_kv_heads, int grid, int max_splits) {
  int s = std::max(1, grid / std::max(1, tokens * num_kv_heads));
  s = std::min({s, max_splits, 16, kMaxMerge / std::max(1, tokens * num_heads)});
  return std::max(1, s);
}

bool DecodeKernelSupports(int tokens, int head_dim, int num_heads, int num_kv_heads,
                          const DecodePhase* phases, int count) {
  if (tokens < 1 || tokens > kMaxDecodeKernelTokens || tokens * num_heads > kMaxMerge) return false;
  const int group = num_heads / num_kv_heads;
  bool shape = false;
  for (const auto& s : kShapes) shape = shape || (s[0] == head_dim && s[1] == group);
  if (!shape) return false;
  int max_in = 0;
  for (int i = 0; i < count; ++i) {
    const DecodePhase& ph = phases[i];
    if (ph.kind == DecodePhaseKind::kAttention) continue;
    const int rows = ph.kind == DecodePhaseKind::kGateUp ? 2 : 1;
    if (ph.in_dim % 8 != 0 || rows * ph.in_dim * 2 > kSlotBytes) return false;
    max_in = std::max(max_in, ph.in_dim);
  }
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return false;
  }
  const size_t static_smem = tokens <= 1 ? StaticSmem<1>() : tokens <= 2 ? StaticSmem<2>()
                            : tokens <= 4 ? StaticSmem<4>() : StaticSmem<8>();
  return SmemBytes(tokens, head_dim, group, max_in) + static_smem <= static_cast<size_t>(optin);
}

void LaunchDecodeKernel(const DecodeKernelArgs& a, int max_in_dim, cudaStream_t stream) {
  const size_t smem = SmemBytes(a.tokens, a.head_dim, a.num_heads / a.num_kv_heads, max_in_dim);
  if (a.tokens <= 1) return Launch<1>(a, smem, stream);
  if (a.tokens <= 2) return Launch<2>(a, smem, stream);
  if (a.tokens <= 4) return Launch<4>(a, smem, stream);
  Launch<8>(a, smem, stream);
}

}  // namespace ultramem::cuda
