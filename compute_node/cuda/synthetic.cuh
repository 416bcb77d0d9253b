// Fills a device value table with common/synthetic_values.h's function (benchmark checkpoints
// whose memory.{j}.values are declared, not stored).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/synthetic_values.h"

namespace ultramem::cuda {

// out[r, c] = SyntheticValueBf16(seed, scale, layer, row_begin + r, col_begin + c) for r < rows,
// c < width.
void LaunchFillSynthetic(const SyntheticValues& spec, int layer, int64_t row_begin, int64_t rows,
                         int col_begin, int width, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace ultramem::cuda
