// The memory server's pooling kernel (MODEL.md §3 step 10): one fused gather-weight-pool over bf16
// row slots, fp32 accumulation, writing Y[token, E, width]. Used by the GPU hot tier
// (cuda_hot_tier.cu) and by GpuRowPool (gpu_pool.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace ultramem::memory::cuda {

// Device pointers and the shape of one launch.
struct PoolLaunch {
  const __nv_bfloat16* table = nullptr;  // [num_slots, width]
  int64_t num_slots = 0;
  const __nv_bfloat16* extra = nullptr;  // rows of slots >= num_slots: [slot - num_slots, width]
  const int64_t* slots = nullptr;        // [S]; negative: skipped
  const int32_t* groups = nullptr;       // [S], in [0, expand)
  const float* scores = nullptr;         // [S, cores]
  const int32_t* offsets = nullptr;      // [T + 1], or null: token t owns [t·K, (t+1)·K)
  int num_tokens = 0;                    // T
  int selections = 0;                    // K when offsets is null
  int expand = 1;
  int width = 0;      // columns of a row
  int col_begin = 0;  // first column's index in the full row
  int chunk = 1;      // Dv / h: columns per Tucker core's score
  int cores = 1;
  float* out = nullptr;  // [T, expand, width]
};

// Bytes of shared memory a launch of this shape needs (expand × width fp32 accumulators).
size_t PoolSharedBytes(int expand, int width);
// Raises the kernels' shared-memory limit for `bytes` when above the 48 KiB default (once per
// process and device is enough). INVALID_ARGUMENT when the device cannot give that much.
absl::Status PreparePoolKernels(size_t bytes);
// Enqueues the kernel on `stream` (nothing for T = 0). INTERNAL on a launch error.
absl::Status LaunchPool(const PoolLaunch& launch, cudaStream_t stream);

// table[dst[i]] = src[i] for i < n with dst[i] >= 0 (rows of `width` bf16), on `stream`.
absl::Status LaunchCopyRows(const __nv_bfloat16* src, const int64_t* dst, int n, int width,
                            __nv_bfloat16* table, cudaStream_t stream);

}  // namespace ultramem::memory::cuda
