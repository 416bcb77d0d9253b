// Steps 1–9 of a memory layer (MODEL.md §3) on the CPU: query, TDQKR scoring with rank-1
// pre-selection, exact multi-core re-scoring, top-m, and the shuffle to (row, group).
#pragma once

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "compute_node/cpu/thread_pool.h"
#include "compute_node/model_weights.h"

namespace ultramem {

// The selections of T tokens for one memory layer, in the layout of PoolRequest.
struct Selections {
  std::vector<int64_t> rows;     // [T*K]
  std::vector<int32_t> groups;   // [T*K]
  std::vector<float> scores;     // [T*K*h]
  std::vector<int64_t> t_index;  // [T*K] t = shuffle_index[virtual]
};

// Computes the selections for u[T, D] (the ffn-norm output of the layer's input block).
// `scratch` is reused between calls to avoid allocation.
void SelectRows(ThreadPool& pool, const MemoryConfig& mc, const MemoryLayerWeights& w,
                const float* u, int64_t tokens, int64_t hidden, std::vector<float>* scratch,
                Selections* out);

// Indices of the m largest of v[0..n): descending, ties to the lower index, NaN lowest.
void TopM(const float* v, int n, int m, int* out);

}  // namespace ultramem
