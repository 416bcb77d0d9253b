// Implementation of synthetic.cuh: a grid-stride loop, one element per thread per iteration
// (write-bound: 2 bytes per ~20 integer ops; tens of GB per second is plenty for start-up).
#include "compute_node/cuda/synthetic.cuh"

#include <algorithm>

namespace ultramem::cuda {

static __global__ void FillSyntheticKernel(uint64_t seed, float scale, int layer, int64_t row_begin,
                                           int64_t rows, int col_begin, int width,
                                           uint16_t* out) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width;
    const int c = static_cast<int>(i - r * width);
    out[i] = SyntheticValueBf16(seed, scale, layer, row_begin + r, col_begin + c);
  }
}

void LaunchFillSynthetic(const SyntheticValues& spec, int layer, int64_t row_begin, int64_t rows,
                         int col_begin, int width, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return;
  const int64_t total = rows * width;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 132 * 32));
  FillSyntheticKernel<<<blocks, 256, 0, stream>>>(spec.seed, spec.scale, layer, row_begin, rows,
                                                  col_begin, width, reinterpret_cast<uint16_t*>(out));
}

}  // namespace ultramem::cuda
