// Fills device memory with common/synthetic_values.h's function in place: a memory server's GPU
// slots and the CUDA engine's in-process tables of a synthetic checkpoint (rows never pass
// through the host). The one CUDA library of common/ (cudart only, no cuBLAS).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/synthetic_values.h"

namespace ultramem {

// out[r, c] = SyntheticValueBf16(spec.seed, spec.scale, layer, row_begin + r, col_begin + c) for
// r < rows, c < width (row-major, `width` values a row), on `stream`. INTERNAL naming the CUDA
// error when the launch fails.
absl::Status LaunchFillSyntheticBf16(const SyntheticValues& spec, int layer, int64_t row_begin,
                                     int64_t rows, int col_begin, int width,
                                     __nv_bfloat16* out, cudaStream_t stream);

}  // namespace ultramem
