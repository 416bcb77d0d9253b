// Memory-layer steps 5–9 (MODEL.md §3) fused, one block per (token, head): rank-1 proxies, top-m
// rows and columns, exact multi-core re-scoring of the m×m grid, top-m of the grid (descending,
// ties to the lower index, NaN lowest) and the shuffle to (row, group).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace ultramem::cuda {

struct TopMShape {
  int tokens = 0;
  int heads = 0;      // H
  int num_keys = 0;   // n
  int rank = 0;       // r
  int cores = 0;      // h
  int topk = 0;       // m
  int64_t num_rows = 0;  // N
};

// scores: [H][2][tokens][n·r] fp32. cores: [H][h][r][r]; core_u, core_v: [H][r].
// shuffle: [E·N]. Outputs [tokens·H·m] (scores_out ·h), k = head·m + rank.
// The select (UM_CUDA_TOPM): 0 a radix select over four 8-bit digits; 1 two digits, then the
// threshold bin ranked directly; 2 (the default) where m <= 32, the keys above the least of 32
// (permuted) groups' maxima ranked against each other, else as 1. All three are exact. -1: the
// environment decides.
void SetTopMVariantForTesting(int variant);
// The threshold select's group (0..31) of each of n keys selected by `nthreads` threads (256 for
// the rows and columns, 512 for the grid), for a test to build keys that defeat it.
std::vector<int> TopMThresholdGroupsForTesting(int n, int nthreads);

// UM_CUDA_TOPM_TRACE=1 (read once): block (0, 0) of every launch records the SM cycles of its
// phases: the PDL wait, loading the scores and the rank-1 proxies (step 5), the row and column
// selections (6), the grid's exact scores (7), the grid's selection (8) and the outputs (9).
struct TopMTraceRecord {
  int tokens;
  unsigned long long cycles[6];  // wait, proxies, selections, grid, grid selection, outputs
};
bool TopMTraceEnabled();
// The records since the last call (at most the last 256), oldest first; clears them.
std::vector<TopMTraceRecord> TakeTopMTrace();

void LaunchMemoryTopM(const TopMShape& shape, const float* scores, const float* cores,
                      const float* core_u, const float* core_v, const int64_t* shuffle,
                      int64_t* rows, int32_t* groups, float* scores_out, int64_t* t_index,
                      cudaStream_t stream);

}  // namespace ultramem::cuda
