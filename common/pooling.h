// Step 10 of a memory layer (MODEL.md §3): the weighted, bucketed row pooling, the one CPU kernel
// that both the in-process engine and the memory servers run.
//
//   Y[t, g, col] += Σ_{k : group[t,k] == g} score[t, k, col / (Dv/h)] · row[t,k][col]
//
// over a column range [col_begin, col_end) of the value rows. Rows arrive as pointers so that a
// caller can mix rows from different tiers (a hot-tier slot, a RocksDB read buffer, an mmapped
// checkpoint); a null pointer means "not this shard's row" and contributes nothing.
#pragma once

#include <cstdint>

namespace ultramem {

struct PoolShape {
  int num_tokens = 0;   // T
  int selections = 0;   // K = H·m selections per token
  int expand = 1;       // E
  int value_dim = 0;    // Dv (full row width; chunk width is Dv / cores)
  int cores = 1;        // h
  int col_begin = 0;    // first column pooled
  int col_end = 0;      // one past the last column pooled; rows hold only these columns
};

// out: [T, E, col_end - col_begin], overwritten (zeros where no selection hit a group).
// rows: [T*K] pointers to (col_end - col_begin) values each, or null to skip.
// groups: [T*K] in [0, E) (not checked here). scores: [T*K*h].
void PoolRowsF32(const PoolShape& shape, const float* const* rows, const int32_t* groups,
                 const float* scores, float* out);
// The same for bf16 rows (fp32 accumulation).
void PoolRowsBf16(const PoolShape& shape, const uint16_t* const* rows, const int32_t* groups,
                  const float* scores, float* out);

}  // namespace ultramem
