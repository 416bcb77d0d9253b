// Implementation of pool.cuh: one block per token; threads own columns (accumulators in shared
// memory), so selections need no atomics.
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

// Vector path (Dv and the chunk width multiples of 8): the block's threads form S slices, each
// covering every 8-column group of a row with one 16-byte load; slice s pools selections s, s+S,
// ... with 8 row loads in flight, into its own shared accumulator; the slices are summed at the
// end. Many independent loads per token instead of one chain: a decode step's few tokens no
// longer wait on 64 row latencies in a row.
static constexpr int kVecThreads = 256;
static constexpr int kSmemFloats = 12288;  // 48 KB

static __global__ void __launch_bounds__(kVecThreads)
    DevicePoolVecKernel(const __nv_bfloat16* values, const int64_t* rows, const int32_t* groups,
                        const float* scores, int selections, int expand, int value_dim, int cores,
                        int slices, __nv_bfloat16* y) {
  extern __shared__ float acc[];  // [slices][E][Dv]
  const int t = blockIdx.x;
  const int cols8 = value_dim / 8;
  const int chunk = value_dim / cores;
  const int ev = expand * value_dim;
  for (int e = threadIdx.x; e < slices * ev; e += kVecThreads) acc[e] = 0.0f;
  __syncthreads();
  const int s = threadIdx.x / cols8, c8 = (threadIdx.x % cols8) * 8;
  const int64_t base = static_cast<int64_t>(t) * selections;
  if (s < slices) {
    float* my = acc + s * ev;
    const int core = c8 / chunk;
    for (int k0 = s; k0 < selections; k0 += 8 * slices) {
      uint4 raw[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int k = k0 + u * slices;
        raw[u] = k < selections
                     ? *reinterpret_cast<const uint4*>(values + rows[base + k] * value_dim + c8)
                     : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int k = k0 + u * slices;
        if (k >= selections) break;
        const float w = scores[(base + k) * cores + core];
        float* a = my + groups[base + k] * value_dim + c8;
        const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = __bfloat1622float2(p[i]);
          a[2 * i] += w * f.x;
          a[2 * i + 1] += w * f.y;
        }
      }
    }
  }
  __syncthreads();
  __nv_bfloat16* out = y + static_cast<int64_t>(t) * ev;
  for (int e = threadIdx.x; e < ev; e += kVecThreads) {
    float sum = 0.0f;
    for (int q = 0; q < slices; ++q) sum += acc[q * ev + e];
    out[e] = __float2bfloat16(sum);
  }
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
  const int chunk = value_dim / cores;
  const int cols8 = value_dim / 8;
  if (value_dim % 8 == 0 && chunk % 8 == 0 && cols8 <= kVecThreads &&
      expand * value_dim <= kSmemFloats) {
    const int slices = std::max(1, std::min(kVecThreads / cols8, kSmemFloats / (expand * value_dim)));
    DevicePoolVecKernel<<<tokens, kVecThreads, sizeof(float) * slices * expand * value_dim, stream>>>(
        values, rows, groups, scores, selections, expand, value_dim, cores, slices, y);
    return;
  }
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
