// Shared setup of the memory-server benchmarks: a random checkpoint with one big memory layer,
// imported into a store in a temporary directory (removed on destruction), and decode-shaped
// selections (uniform or Zipf-distributed rows).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "memory_server/importer.h"
#include "ultramem/v1/memory.pb.h"

namespace ultramem::memory::bench {

struct BenchStore {
  // knum² rows of `value_dim` bf16 values, E = 4, h = 2, H·m = 2×32. With synthetic_seed >= 0
  // the values are synthetic (common/synthetic_values.h, scale 1): the import is instant at any
  // size and the store holds no rows.
  BenchStore(int knum, int value_dim, int64_t synthetic_seed = -1);
  ~BenchStore();
  std::string dir, checkpoint_dir, store_dir;
  StoreManifest manifest;
  double import_seconds = 0;
};

// One request's worth of selections: T tokens × K rows.
struct Batch {
  int num_tokens = 0;
  std::vector<int64_t> rows;
  std::vector<int32_t> groups;
  std::vector<float> weights;  // [S, 2]
};
// Uniform rows when zipf_s == 0, else Zipf(zipf_s) popularity over scattered rows.
std::vector<Batch> MakeBatches(int count, int num_tokens, int per_token, int64_t num_rows,
                               double zipf_s, uint64_t seed);
ultramem::v1::LookupRequest ToRequest(const Batch& batch, bool bf16_out);

// Percentile (0..100) of `samples` (sorted in place).
double Percentile(std::vector<double>& samples, double p);

}  // namespace ultramem::memory::bench
