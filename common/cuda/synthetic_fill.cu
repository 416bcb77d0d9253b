// Implementation of synthetic_fill.cuh: a grid-stride loop, 8 values (one 16-byte store) per
// thread and step when the width allows, else one. Integer-bound (two 64-bit mixes a value).
#include "common/cuda/synthetic_fill.cuh"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ultramem {
namespace {

__global__ void FillVec8Kernel(uint64_t seed, float scale, int layer, int64_t row_begin,
                               int64_t rows, int col_begin, int width, uint4* out) {
  const int vecs = width / 8;
  const int64_t total = rows * vecs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / vecs;
    const int c = static_cast<int>(i - r * vecs) * 8 + col_begin;
    uint32_t w[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const uint32_t lo = SyntheticValueBf16(seed, scale, layer, row_begin + r, c + 2 * u);
      const uint32_t hi = SyntheticValueBf16(seed, scale, layer, row_begin + r, c + 2 * u + 1);
      w[u] = lo | (hi << 16);
    }
    out[i] = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

__global__ void FillScalarKernel(uint64_t seed, float scale, int layer, int64_t row_begin,
                                 int64_t rows, int col_begin, int width, uint16_t* out) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width;
    const int c = static_cast<int>(i - r * width);
    out[i] = SyntheticValueBf16(seed, scale, layer, row_begin + r, col_begin + c);
  }
}

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("synthetic fill: ", what, ": ", cudaGetErrorString(e)));
}

}  // namespace

absl::Status LaunchFillSyntheticBf16(const SyntheticValues& spec, int layer, int64_t row_begin,
                                 int64_t rows, int col_begin, int width, __nv_bfloat16* out,
                                 cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return absl::OkStatus();
  int device = 0, sms = 0;
  if (auto st = Check(cudaGetDevice(&device), "cudaGetDevice"); !st.ok()) return st;
  if (auto st = Check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count"); !st.ok()) return st;
  const int max_blocks = std::max(1, sms) * 16;
  if (width % 8 == 0) {
    const int64_t total = rows * (width / 8);
    const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, max_blocks));
    FillVec8Kernel<<<blocks, 256, 0, stream>>>(spec.seed, spec.scale, layer, row_begin, rows,
                                               col_begin, width, reinterpret_cast<uint4*>(out));
  } else {
    const int64_t total = rows * width;
    const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, max_blocks));
    FillScalarKernel<<<blocks, 256, 0, stream>>>(spec.seed, spec.scale, layer, row_begin, rows,
                                                 col_begin, width,
                                                 reinterpret_cast<uint16_t*>(out));
  }
  return Check(cudaGetLastError(), "launch");
}

}  // namespace ultramem
