// The in-process RowPooler: value tables in this process's memory (the reference every distributed
// run must match, and the fastest path when a model fits one machine).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "compute_node/row_pooler.h"

namespace ultramem {

class InProcessPooler : public RowPooler {
 public:
  // Reads memory.{j}.values of every memory layer. F32 and BF16 tables are used in place from the
  // checkpoint's mapping when aligned (no copy); F16 or unaligned tables are converted to float32.
  static absl::StatusOr<std::unique_ptr<InProcessPooler>> Create(
      std::shared_ptr<const Checkpoint> checkpoint);

  // Pools synchronously; the returned PendingPool is already done. Rows outside [0, N) or groups
  // outside [0, E) give INVALID_ARGUMENT (the engine never produces them).
  std::unique_ptr<PendingPool> Start(const PoolRequest& request) override;

  // Total bytes of the tables' rows (for benchmarks).
  int64_t RowBytes(int layer) const { return tables_[layer].row_bytes; }

 private:
  struct Table {
    const float* f32 = nullptr;      // one of f32 / bf16 is set
    const uint16_t* bf16 = nullptr;
    std::vector<float> owned;        // backing store when converted
    int64_t num_rows = 0;
    int64_t row_bytes = 0;
  };
  InProcessPooler() = default;

  std::shared_ptr<const Checkpoint> checkpoint_;
  std::vector<Table> tables_;
  int expand_ = 1, value_dim_ = 0, cores_ = 1;
};

}  // namespace ultramem
