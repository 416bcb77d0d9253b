// The memory server's GPU hot-tier pooling (MODEL.md §3 step 10): value rows resident in GPU
// memory as bf16 slots, one fused gather-weight-pool kernel writing Y[token, E, columns] with fp32
// accumulation, and requests/replies staged through pinned host buffers with asynchronous copies.
// Equal (to fp32 rounding) to common/pooling.h's PoolRowsBf16. No CUDA type appears here.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/pooling.h"

namespace ultramem {

class GpuRowPool {
 public:
  // Uploads `num_slots` rows of `width` bf16 values (row-major) to the current device.
  // FAILED_PRECONDITION without a CUDA device; INTERNAL on CUDA errors.
  static absl::StatusOr<std::unique_ptr<GpuRowPool>> Create(const uint16_t* rows, int64_t num_slots,
                                                            int width);
  virtual ~GpuRowPool() = default;

  // out[T, E, width] = pooled sums over the selections (shape.col_end - shape.col_begin must be
  // the slot width). slots[T*K]: slot of each selection, or -1 for a row this shard does not hold
  // (contributes nothing). groups[T*K] in [0, E); scores[T*K*h]. Host pointers; blocks until out
  // is written. INVALID_ARGUMENT for a slot >= num_slots or a bad shape. One caller at a time.
  virtual absl::Status Pool(const PoolShape& shape, const int64_t* slots, const int32_t* groups,
                            const float* scores, float* out) = 0;

  // For benchmarks: the kernel alone on the request already on the device from the last Pool,
  // `iterations` times; returns mean microseconds per launch (CUDA events).
  virtual absl::StatusOr<double> TimeLastKernel(int iterations) = 0;
};

// Device-to-device copy bandwidth (bytes read + written per second) over `bytes`-byte buffers.
absl::StatusOr<double> GpuCopyBandwidth(size_t bytes);

}  // namespace ultramem
