// Fills GPU row slots with common/synthetic_values.h's function in place (a synthetic store's
// rows never pass through the host).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/synthetic_values.h"

namespace ultramem::memory::cuda {

// out[r, c] = SyntheticValueBf16(spec.seed, spec.scale, layer, row_begin + r, col_begin + c) for
// r < rows, c < width (row-major, `width` values a row), on `stream`.
absl::Status LaunchFillSynthetic(const SyntheticValues& spec, int layer, int64_t row_begin,
                                 int64_t rows, int col_begin, int width, __nv_bfloat16* out,
                                 cudaStream_t stream);

}  // namespace ultramem::memory::cuda
