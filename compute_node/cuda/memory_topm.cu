// Implementation of memory_topm.cuh. Top-m is a threshold select where m <= 32 (BlockTopMThreshold),
// else a block-wide radix select (8-bit digits of an order-preserving key) for the m-th largest
// value, then the elements above it plus the lowest-index ties, ranked by (value desc, index asc).
#include "compute_node/cuda/memory_topm.cuh"

#include <cmath>

#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static constexpr int kThreads = 512;

// Order-preserving map: larger float -> larger key. NaN ranks as -inf (ties then go to the lower
// index, as on the CPU); -0 equals +0.
static __device__ __forceinline__ uint32_t OrderKey(float x) {
  if (isnan(x)) x = -INFINITY;
  if (x == 0.0f) x = 0.0f;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Barrier over `nthreads` threads (whole warps): the block (bar 0) or a named part of it.
static __device__ __forceinline__ void Sync(int bar, int nthreads) {
  if (bar == 0) {
    __syncthreads();
  } else {
    asm volatile("bar.sync %0, %1;" ::"r"(bar), "r"(nthreads) : "memory");
  }
}

// Writes the indices of the m largest keys[0..n) to out[0..m) in descending order (ties: lower
// index first). scratch: 256 + 8 ints; cand: m ints. Called by `nthreads` threads (whole warps,
// local ids tid = 0..nthreads-1) that share barrier `bar` (0: the whole block).
// `two_pass` (UM_CUDA_TOPM=1, the default where m > 32; 0 turns it off): after two digits, when the
// threshold's bin holds at most 256 keys, those are ranked against each other directly instead
// of two more radix passes and the tie scan (H200: batch 1 299.7 -> 293.0 us a step).
static __device__ void BlockTopM(const uint32_t* keys, int n, int m, int* out, int* scratch,
                                 int* cand, int tid, int nthreads, int bar, bool two_pass) {
  int* hist = scratch;       // [256]
  int* sh = scratch + 256;   // [0] prefix, [1] remaining, [2] counter, [3] the chosen bin's size, [4] counter
  const int lane = tid & 31, warp = tid >> 5;
  const int n_round = (n + 31) & ~31;  // whole warps stay converged
  uint32_t prefix = 0, mask = 0;
  int remaining = m;
  bool bin_ranked = false;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += nthreads) hist[b] = 0;
    Sync(bar, nthreads);
    // Warp-aggregated: the leading digits of near-equal scores are few, so plain atomics would
    // serialize on a handful of bins.
    for (int i = tid; i < n_round; i += nthreads) {
      int digit = 256;  // none
      if (i < n) {
        const uint32_t k = keys[i];
        if ((k & mask) == prefix) digit = static_cast<int>((k >> shift) & 255u);
      }
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      if (digit < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
    Sync(bar, nthreads);
    if (warp == 0) {
      // Lane L scans digits 255-8L .. 248-8L (descending).
      int local = 0;
      for (int j = 0; j < 8; ++j) local += hist[255 - (lane * 8 + j)];
      int incl = local;
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      const int excl = incl - local;
      if (excl < remaining && remaining <= incl) {
        int cum = excl;
        for (int j = 0; j < 8; ++j) {
          const int digit = 255 - (lane * 8 + j);
          const int h = hist[digit];
          if (cum + h >= remaining) {
            sh[0] = static_cast<int>(prefix | (static_cast<uint32_t>(digit) << shift));
            sh[1] = remaining - cum;
            sh[3] = h;
            break;
          }
          cum += h;
        }
      }
    }
    Sync(bar, nthreads);
    prefix = static_cast<uint32_t>(sh[0]);
    remaining = sh[1];
    const int bin = sh[3];
    mask |= 255u << shift;
    Sync(bar, nthreads);
    if (two_pass && shift == 16 && bin <= 256) {  // the same for every thread
      bin_ranked = true;
      break;
    }
  }
  const int above = m - remaining;
  if (bin_ranked) {
    // Two digits fixed: every key above the bin is taken, and the bin's keys (at most 256, their
    // indices gathered into the free histogram) are ranked against each other for the rest.
    if (tid == 0) sh[2] = sh[4] = 0;
    Sync(bar, nthreads);
    for (int i = tid; i < n; i += nthreads) {
      const uint32_t k = keys[i] & mask;
      if (k > prefix) {
        cand[atomicAdd(&sh[2], 1)] = i;
      } else if (k == prefix) {
        hist[atomicAdd(&sh[4], 1)] = i;
      }
    }
    Sync(bar, nthreads);
    const int c = sh[4];
    for (int j = tid; j < c; j += nthreads) {
      const int i = hist[j];
      const uint32_t k = keys[i];
      int rank = 0;
      for (int e = 0; e < c; ++e) {
        const int ie = hist[e];
        const uint32_t ke = keys[ie];
        rank += (ke > k) || (ke == k && ie < i);
      }
      if (rank < remaining) cand[above + rank] = i;
    }
  } else {
    // prefix is the m-th largest key; take every key above it and the `remaining` lowest-index ties.
    const uint32_t thr = prefix;
    if (tid == 0) sh[2] = 0;
    Sync(bar, nthreads);
    for (int i = tid; i < n; i += nthreads) {
      if (keys[i] > thr) cand[atomicAdd(&sh[2], 1)] = i;
    }
    int taken = 0;
    for (int base = 0; base < n && taken < remaining; base += nthreads) {
      const int i = base + tid;
      const bool tie = i < n && keys[i] == thr;
      const unsigned ballot = __ballot_sync(0xffffffffu, tie);
      if (lane == 0) hist[warp] = __popc(ballot);
      Sync(bar, nthreads);
      int before = 0, total = 0;
      for (int w = 0; w < nthreads / 32; ++w) {
        if (w < warp) before += hist[w];
        total += hist[w];
      }
      const int rank = taken + before + __popc(ballot & ((1u << lane) - 1u));
      if (tie && rank < remaining) cand[above + rank] = i;
      taken += total;
      Sync(bar, nthreads);
    }
  }
  Sync(bar, nthreads);
  // Rank the m candidates among themselves. Their keys first into the free histogram (m <= 256),
  // so that the O(m) loop below reads two independent arrays instead of a key through an index.
  uint32_t* ck = reinterpret_cast<uint32_t*>(hist);
  const bool packed = m <= 256;
  if (packed) {
    for (int c = tid; c < m; c += nthreads) ck[c] = keys[cand[c]];
    Sync(bar, nthreads);
  }
  for (int c = tid; c < m; c += nthreads) {
    const int i = cand[c];
    const uint32_t k = packed ? ck[c] : keys[i];
    int rank = 0;
#pragma unroll 8
    for (int e = 0; e < m; ++e) {
      const int j = cand[e];
      const uint32_t kj = packed ? ck[e] : keys[j];
      rank += (kj > k) || (kj == k && j < i);
    }
    out[rank] = i;
  }
  Sync(bar, nthreads);
}

// The threshold select (UM_CUDA_TOPM=2, the default where m <= 32). Every key becomes a unique
// 64-bit word, (order key << 32) | ~index, so "larger word" is exactly "ranks first" (higher
// score, then lower index). Lane L of the part reads keys PermuteIndex(i) for i = L, L + 32, ...
// of the part's positions and keeps their largest word: 32 groups. T, the least of the groups'
// maxima, is at most the 32nd largest word, so the words >= T hold the top m. The permutation,
// not the position, picks a key's group, so keys in a structured order (the grid's rows and
// columns come sorted by their proxies) do not line up with the groups: about 90–130 candidates
// of 1024 or 2048 keys (rarely 300), ranked against each other. Three barriers, where the radix
// select meets at several per digit. More candidates than `cap` (adversarial keys) fall back to
// the two-digit radix select.
// lane_max: nthreads words; cand: cap words; count: one int.
static __device__ __forceinline__ uint64_t SelectWord(uint32_t key, int index) {
  return (static_cast<uint64_t>(key) << 32) | static_cast<uint32_t>(~index);
}

// A bijection of [0, n): a mixing bijection of [0, 2^bits) (odd multiplies, xor-shifts), walked
// until it lands below n.
static __host__ __device__ __forceinline__ int PermuteIndex(int i, int n, int bits) {
  const uint32_t mask = (bits >= 32) ? ~0u : (1u << bits) - 1u, half = (bits + 1) / 2;
  uint32_t x = static_cast<uint32_t>(i);
  do {
    x = (x * 0x9E3779B1u) & mask;
    x ^= x >> half;
    x = (x * 0x85EBCA77u) & mask;
    x ^= x >> half;
  } while (x >= static_cast<uint32_t>(n));
  return static_cast<int>(x);
}
static __host__ __device__ __forceinline__ int PermuteBits(int n) {
  int bits = 1;
  while (bits < 31 && (1 << bits) < n) ++bits;
  return bits;
}

static __device__ void BlockTopMThreshold(const uint32_t* keys, int n, int m, int* out,
                                          uint64_t* lane_max, uint64_t* cand, int cap, int* count,
                                          int* scratch, int* cand_idx, int tid, int nthreads,
                                          int bar) {
  const int lane = tid & 31;
  const int bits = PermuteBits(n);
  uint64_t mx = 0;  // below every word: ~index is never 0
  for (int i = tid; i < n; i += nthreads) {
    const int e = PermuteIndex(i, n, bits);
    const uint64_t w = SelectWord(keys[e], e);
    mx = w > mx ? w : mx;
  }
  lane_max[tid] = mx;
  if (tid == 0) *count = 0;
  Sync(bar, nthreads);
  // An empty group (n < 32) stays zero, so every key is then a candidate.
  uint64_t g = 0;
  for (int w = 0; w < nthreads; w += 32) {
    const uint64_t v = lane_max[w + lane];
    g = v > g ? v : g;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t v = __shfl_xor_sync(0xffffffffu, g, o);
    g = v < g ? v : g;
  }
  const uint64_t thr = g;
  const int n_round = (n + 31) & ~31;  // whole warps stay converged for the ballot
  for (int i = tid; i < n_round; i += nthreads) {
    uint64_t w = 0;
    const bool take = i < n && (w = SelectWord(keys[i], i)) >= thr;
    const unsigned ballot = __ballot_sync(0xffffffffu, take);
    int base = 0;
    if (lane == 0 && ballot != 0) base = atomicAdd(count, __popc(ballot));
    base = __shfl_sync(0xffffffffu, base, 0);
    const int at = base + __popc(ballot & ((1u << lane) - 1u));
    if (take && at < cap) cand[at] = w;
  }
  Sync(bar, nthreads);
  const int c = *count;
  if (c > cap) {  // the same for every thread
    BlockTopM(keys, n, m, out, scratch, cand_idx, tid, nthreads, bar, true);
    return;
  }
  for (int j = tid; j < c; j += nthreads) {
    const uint64_t w = cand[j];
    int rank = 0;
#pragma unroll 8
    for (int e = 0; e < c; ++e) rank += cand[e] > w;
    if (rank < m) out[rank] = static_cast<int>(~static_cast<uint32_t>(w));
  }
  Sync(bar, nthreads);
}

// Step 7 for one core: G_c[x, y] = S_row[I_row[x]] · core_c · S_col[I_col[y]]ᵀ (sr, sc: the
// row's and the column's r scores; core: r × r). One function for the ranking and the outputs, so
// both compute the same bits.
static __device__ __forceinline__ float GridCoreScore(const float* sr, const float* sc, const float* core, int r) {
  float gc = 0.0f;
  for (int b = 0; b < r; ++b) {
    float a_cb = 0.0f;
    for (int a = 0; a < r; ++a) a_cb += sr[a] * core[a * r + b];
    gc += a_cb * sc[b];
  }
  return gc;
}

constexpr int kTopMTraceSlots = 256;
__device__ TopMTraceRecord g_topm_trace[kTopMTraceSlots];
__device__ unsigned int g_topm_trace_next;

static __global__ void __launch_bounds__(kThreads)
    MemoryTopMKernel(TopMShape s, const float* scores, const float* cores, const float* core_u,
                     const float* core_v, const int64_t* shuffle, int64_t* rows, int32_t* groups,
                     float* scores_out, int64_t* t_index, int variant, bool trace) {
  unsigned long long clk[7];
  const bool tracing = trace && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0;
  if (tracing) clk[0] = clock64();
  GridDependencyWait();
  AllowDependents();
  if (tracing) clk[1] = clock64();
  const int t = blockIdx.x, h = blockIdx.y;
  const int n = s.num_keys, r = s.rank, m = s.topk, hc = s.cores, mm = m * m;
  const int64_t nr = static_cast<int64_t>(n) * r;
  extern __shared__ uint64_t smem64[];
  // The threshold select's words: the rows' lane maxima (kThreads / 2) and candidates in
  // [0, 2·kThreads), the columns' in [2·kThreads, 4·kThreads), the grid's candidates over both
  // once those are done and its lane maxima (kThreads) after them.
  uint64_t* words = smem64;                     // [5·kThreads]
  uint32_t* key_row = reinterpret_cast<uint32_t*>(words + 5 * kThreads);  // [n]
  uint32_t* key_col = key_row + n;              // [n]
  uint32_t* key_g = key_col + n;                // [m·m]
  int* i_row = reinterpret_cast<int*>(key_g + mm);  // [m]
  int* i_col = i_row + m;                       // [m]
  int* best = i_col + m;                        // [m]
  int* cand = best + m;                         // [m]
  int* scratch = cand + m;                      // [256 + 8]
  int* cand2 = scratch + 256 + 8;               // [m]     the column selection's own
  int* scratch2 = cand2 + m;                    // [256 + 8]
  float* sel_row = reinterpret_cast<float*>(scratch2 + 256 + 8);  // [m·r] the selected rows' scores
  float* sel_col = sel_row + m * r;                               // [m·r] the selected columns'
  float* core_s = sel_col + m * r;                                // [h·r·r] this head's cores
  const bool threshold = variant == 2 && m <= 32;
  const bool two_pass = variant != 0;

  const float* s_row = scores + ((static_cast<int64_t>(h) * 2 + 0) * s.tokens + t) * nr;
  const float* s_col = scores + ((static_cast<int64_t>(h) * 2 + 1) * s.tokens + t) * nr;
  const float* cu = core_u + h * r;
  const float* cv = core_v + h * r;
  const float* cores_h = cores + static_cast<int64_t>(h) * hc * r * r;
  for (int i = threadIdx.x; i < hc * r * r; i += kThreads) core_s[i] = cores_h[i];
  // Step 5: rank-1 proxies. Only the selected rows' and columns' scores are kept for step 7 (read
  // again after step 6, from L2), so the block's shared memory does not grow with n·r (~44 KB at
  // the bench shape, was ~75; the step time did not change with it).
  for (int i = threadIdx.x; i < n; i += kThreads) {
    float pr = 0.0f, pc = 0.0f;
    for (int a = 0; a < r; ++a) {
      pr += s_row[static_cast<int64_t>(i) * r + a] * cu[a];
      pc += s_col[static_cast<int64_t>(i) * r + a] * cv[a];
    }
    key_row[i] = OrderKey(pr);
    key_col[i] = OrderKey(pc);
  }
  __syncthreads();
  if (tracing) clk[2] = clock64();
  // Step 6: rows on the first half of the block, columns on the second, at the same time.
  constexpr int kHalf = kThreads / 2;
  if (threshold) {
    if (threadIdx.x < kHalf) {
      BlockTopMThreshold(key_row, n, m, i_row, words, words + kHalf, 2 * kThreads - kHalf,
                         scratch + 263, scratch, cand, threadIdx.x, kHalf, 1);
    } else {
      BlockTopMThreshold(key_col, n, m, i_col, words + 2 * kThreads, words + 2 * kThreads + kHalf,
                         2 * kThreads - kHalf, scratch2 + 263, scratch2, cand2, threadIdx.x - kHalf,
                         kHalf, 2);
    }
  } else if (threadIdx.x < kHalf) {
    BlockTopM(key_row, n, m, i_row, scratch, cand, threadIdx.x, kHalf, 1, two_pass);
  } else {
    BlockTopM(key_col, n, m, i_col, scratch2, cand2, threadIdx.x - kHalf, kHalf, 2, two_pass);
  }
  // Each half's selection is complete behind its barrier: it fetches its rows' scores.
  if (threadIdx.x < kHalf) {
    for (int j = threadIdx.x; j < m * r; j += kHalf) sel_row[j] = s_row[static_cast<int64_t>(i_row[j / r]) * r + j % r];
  } else {
    for (int j = threadIdx.x - kHalf; j < m * r; j += kHalf) sel_col[j] = s_col[static_cast<int64_t>(i_col[j / r]) * r + j % r];
  }
  __syncthreads();
  if (tracing) clk[3] = clock64();
  // Step 7: G_c[x, y] = S_row[I_row[x]] · core_c · S_col[I_col[y]]ᵀ, G = Σ_c G_c.
  for (int e = threadIdx.x; e < mm; e += kThreads) {
    const int x = e / m, y = e - x * m;
    float g = 0.0f;
    for (int c = 0; c < hc; ++c) g += GridCoreScore(sel_row + x * r, sel_col + y * r, core_s + c * r * r, r);
    key_g[e] = OrderKey(g);
  }
  __syncthreads();
  if (tracing) clk[4] = clock64();
  // Step 8, then step 9.
  if (threshold) {
    BlockTopMThreshold(key_g, mm, m, best, words + 4 * kThreads, words, 4 * kThreads, scratch + 263,
                       scratch, cand, threadIdx.x, kThreads, 0);
  } else {
    BlockTopM(key_g, mm, m, best, scratch, cand, threadIdx.x, kThreads, 0, two_pass);
  }
  if (tracing) clk[5] = clock64();
  const int K = s.heads * m;
  for (int k = threadIdx.x; k < m; k += kThreads) {
    const int j = best[k];
    const int64_t virt = static_cast<int64_t>(i_row[j / m]) * n + i_col[j % m];  // step 9
    const int64_t tv = shuffle[virt];
    const int64_t sel = static_cast<int64_t>(t) * K + h * m + k;
    t_index[sel] = tv;
    rows[sel] = tv % s.num_rows;
    groups[sel] = static_cast<int32_t>(tv / s.num_rows);
    // G_c again, by the same code, for the outputs: equal to the bit to what ranked them.
    const int x = j / m, y = j % m;
    for (int c = 0; c < hc; ++c) {
      scores_out[sel * hc + c] = GridCoreScore(sel_row + x * r, sel_col + y * r, core_s + c * r * r, r);
    }
  }
  if (trace && blockIdx.x == 0 && blockIdx.y == 0) {
    __syncthreads();  // the block's outputs are written
    if (tracing) {
      clk[6] = clock64();
      TopMTraceRecord r;
      r.tokens = s.tokens;
      for (int i = 0; i < 6; ++i) r.cycles[i] = clk[i + 1] - clk[i];
      g_topm_trace[atomicAdd(&g_topm_trace_next, 1u) % kTopMTraceSlots] = r;
    }
  }
}

// The select: UM_CUDA_TOPM=0 four radix digits, 1 two digits and the threshold bin ranked, 2 (the
// default) the threshold select where m <= 32, else as 1.
static EnvKnob select_variant("UM_CUDA_TOPM", 2);

void SetTopMVariantForTesting(int v) { select_variant.Override(v); }

std::vector<int> TopMThresholdGroupsForTesting(int n, int nthreads) {
  std::vector<int> group(n);
  const int bits = PermuteBits(n);
  for (int i = 0; i < n; ++i) group[PermuteIndex(i, n, bits)] = (i % nthreads) % 32;
  return group;
}

bool TopMTraceEnabled() {
  static const bool enabled = EnvInt("UM_CUDA_TOPM_TRACE", 0) != 0;
  return enabled;
}

std::vector<TopMTraceRecord> TakeTopMTrace() { return TakeTraceRing(g_topm_trace, g_topm_trace_next); }

void LaunchMemoryTopM(const TopMShape& shape, const float* scores, const float* cores,
                      const float* core_u, const float* core_v, const int64_t* shuffle,
                      int64_t* rows, int32_t* groups, float* scores_out, int64_t* t_index,
                      cudaStream_t stream) {
  if (shape.tokens == 0) return;
  const int m = shape.topk, mm = m * m;
  const size_t smem = sizeof(uint64_t) * 5 * kThreads + sizeof(uint32_t) * (2 * shape.num_keys + mm) +
                      sizeof(int) * (5 * m + 2 * (256 + 8)) +
                      sizeof(float) * (2 * m * shape.rank + shape.cores * shape.rank * shape.rank);
  LaunchKernel(MemoryTopMKernel, dim3(shape.tokens, shape.heads), dim3(kThreads), smem, stream,
               shape, scores, cores, core_u, core_v, shuffle, rows, groups, scores_out, t_index, select_variant.Get(),
               TopMTraceEnabled());
}

}  // namespace ultramem::cuda
