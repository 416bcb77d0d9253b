// Implementation of rms_norm.cuh: one block per row, a block-wide sum of squares in fp32.
#include "compute_node/cuda/rms_norm.cuh"

#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static constexpr int kThreads = 256;

static __global__ void RmsNormKernel(const float* x, const float* w, int dim, float eps,
                                     const int32_t* rows, __nv_bfloat16* out,
                                     __nv_bfloat16* out2) {
  GridDependencyWait();
  AllowDependents();
  const int i = blockIdx.x;
  const int src = rows != nullptr ? rows[i] : i;
  const float* in = x + static_cast<int64_t>(src) * dim;
  float sum = 0.0f;
  for (int c = threadIdx.x; c < dim; c += kThreads) sum += in[c] * in[c];
  __shared__ float partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int k = 0; k < kThreads / 32; ++k) total += partial[k];
  const float scale = rsqrtf(total / static_cast<float>(dim) + eps);
  __nv_bfloat16* o1 = out + static_cast<int64_t>(i) * dim;
  __nv_bfloat16* o2 = out2 != nullptr ? out2 + static_cast<int64_t>(i) * dim : nullptr;
  for (int c = threadIdx.x; c < dim; c += kThreads) {
    const __nv_bfloat16 v = __float2bfloat16(in[c] * scale * w[c]);
    o1[c] = v;
    if (o2 != nullptr) o2[c] = v;
  }
}

void LaunchRmsNorm(const float* x, const float* w, int rows_count, int dim, float eps,
                   const int32_t* rows, __nv_bfloat16* out, __nv_bfloat16* out2,
                   cudaStream_t stream) {
  if (rows_count == 0) return;
  LaunchKernel(RmsNormKernel, dim3(rows_count), dim3(kThreads), 0, stream, x, w, dim, eps, rows, out, out2);
}

}  // namespace ultramem::cuda
