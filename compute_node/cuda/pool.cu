// Implementation of pool.cuh: one block per token; each thread owns a set of columns for every
// group (accumulators in shared memory), so selections need no atomics.
#include "compute_node/cuda/pool.cuh"

#include <algorithm>

namespace ultramem::cuda {

static constexpr int kThreads = 128;

static __global__ void __launch_bounds__(kThreads)
    DevicePoolKernel(const __nv_bfloat16* values, const int64_t* rows, const int32_t* groups,
                     const float* scores, int selections, int expand, int value_dim, int cores,
                     __nv_bfloat16* y) {
  extern __shared__ float acc[];  // [E][Dv]
  const int t = blockIdx.x;
  const int chunk = value_dim / cores;
  for (int e = threadIdx.x; e < expand * value_dim; e += kThreads) acc[e] = 0.0f;
  __syncthreads();
  const int64_t base = static_cast<int64_t>(t) * selections;
  for (int k = 0; k < selections; ++k) {
    const int64_t row = rows[base + k];
    const int g = groups[base + k];
    const float* w = scores + (base + k) * cores;
    const __nv_bfloat16* v = values + row * value_dim;
    float* a = acc + g * value_dim;
    for (int col = threadIdx.x; col < value_dim; col += kThreads) {
      a[col] += w[col / chunk] * __bfloat162float(v[col]);
    }
  }
  __syncthreads();
  __nv_bfloat16* out = y + static_cast<int64_t>(t) * expand * value_dim;
  for (int e = threadIdx.x; e < expand * value_dim; e += kThreads) out[e] = __float2bfloat16(acc[e]);
}

static __global__ void ToBf16Kernel(const float* in, int64_t count, __nv_bfloat16* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(in[i]);
  }
}

void LaunchDevicePool(const __nv_bfloat16* values, const int64_t* rows, const int32_t* groups,
                      const float* scores, int tokens, int selections, int expand, int value_dim,
                      int cores, __nv_bfloat16* y, cudaStream_t stream) {
  if (tokens == 0) return;
  const size_t smem = sizeof(float) * expand * value_dim;
  if (smem > 48 * 1024) {
    cudaFuncSetAttribute(DevicePoolKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
  }
  DevicePoolKernel<<<tokens, kThreads, smem, stream>>>(values, rows, groups, scores, selections,
                                                       expand, value_dim, cores, y);
}

void LaunchToBf16(const float* in, int64_t count, __nv_bfloat16* out, cudaStream_t stream) {
  if (count == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((count + 255) / 256, 4096));
  ToBf16Kernel<<<blocks, 256, 0, stream>>>(in, count, out);
}

}  // namespace ultramem::cuda
