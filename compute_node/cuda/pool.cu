// Implementation of pool.cuh: threads own columns (accumulators in shared memory), so selections
// need no atomics.
#include "compute_node/cuda/pool.cuh"

#include <algorithm>

#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static constexpr int kThreads = 128;

static __global__ void __launch_bounds__(kThreads)
    DevicePoolKernel(const __nv_bfloat16* values, const int64_t* rows, const int32_t* groups,
                     const float* scores, int selections, int expand, int value_dim, int cores,
                     __nv_bfloat16* y) {
  GridDependencyWait();
  AllowDependents();
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

// Vector path (Dv and the chunk width multiples of 8): a block pools one token's columns
// [g0·8, g1·8) (a decode step's few tokens get several blocks each); its threads form S slices,
// each covering every 8-column group of the range with one 16-byte load; slice s pools selections
// s, s+S, ... with 8 row loads in flight, into its own shared accumulator; the slices are summed
// at the end. A slice's accumulator is [E][8][groups]: column 8·gl + i of group g at
// (g·8 + i)·groups + gl, so that a warp's threads (consecutive gl) hit consecutive banks (with
// each thread's 8 columns side by side, every access was an 8-way bank conflict); slices lie
// slab + groups floats apart, so that the slices sharing a warp (few groups) do not fold onto the
// same banks either.
static constexpr int kVecThreads = 256;
static constexpr int kSmemFloats = 12288;  // 48 KB

static __global__ void __launch_bounds__(kVecThreads)
    DevicePoolVecKernel(const __nv_bfloat16* values, const int64_t* rows, const int32_t* groups,
                        const float* scores, int selections, int expand, int value_dim, int cores,
                        int groups_per_block, int slices, __nv_bfloat16* y) {
  GridDependencyWait();
  AllowDependents();
  extern __shared__ float acc[];  // [slices][E][8][groups_per_block], slices `stride` apart
  const int t = blockIdx.x;
  const int cols8 = value_dim / 8;
  const int g0 = blockIdx.y * groups_per_block;
  const int cw = min(cols8, g0 + groups_per_block) - g0;  // 8-column groups in this block
  const int width = groups_per_block * 8;
  const int chunk = value_dim / cores;
  const int stride = expand * width + groups_per_block;
  for (int e = threadIdx.x; e < slices * stride; e += kVecThreads) acc[e] = 0.0f;
  __syncthreads();
  const int s = threadIdx.x / groups_per_block, gl = threadIdx.x % groups_per_block;
  const int c8 = (g0 + gl) * 8;
  const int64_t base = static_cast<int64_t>(t) * selections;
  if (s < slices && gl < cw) {
    float* my = acc + s * stride + gl;
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
        float* a = my + groups[base + k] * width;
        const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = __bfloat1622float2(p[i]);
          a[(2 * i) * groups_per_block] += w * f.x;
          a[(2 * i + 1) * groups_per_block] += w * f.y;
        }
      }
    }
  }
  __syncthreads();
  __nv_bfloat16* out = y + static_cast<int64_t>(t) * expand * value_dim;
  for (int e = threadIdx.x; e < expand * cw * 8; e += kVecThreads) {
    const int g = e / (cw * 8), c = e - g * (cw * 8);
    const int at = g * width + (c % 8) * groups_per_block + c / 8;
    float sum = 0.0f;
    for (int q = 0; q < slices; ++q) sum += acc[q * stride + at];
    out[g * value_dim + g0 * 8 + c] = __float2bfloat16(sum);
  }
}

static __global__ void ToBf16Kernel(const float* in, int64_t count, __nv_bfloat16* out) {
  GridDependencyWait();
  AllowDependents();
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
    // Fewer tokens than SMs: narrower column blocks, so that a decode step's lookups spread over
    // many SMs with as many rows in flight as threads (H200, graph us a step: batch 1, 32-column
    // blocks, a thread a selection, 287.9 -> 283.7 against 64-column blocks of 16 slices; batch
    // 64, 128-column blocks 726.7 -> 718.4).
    const int groups_per_block = tokens < 8 ? std::min(cols8, 4) : tokens < SmCount() ? std::min(cols8, 16) : cols8;
    const int col_blocks = (cols8 + groups_per_block - 1) / groups_per_block;
    const int stride = expand * groups_per_block * 8 + groups_per_block;  // floats a slice
    int slices = std::min(kVecThreads / groups_per_block, kSmemFloats / stride);
    slices = std::max(1, std::min(slices, selections));
    LaunchKernel(DevicePoolVecKernel, dim3(tokens, col_blocks), dim3(kVecThreads),
                 sizeof(float) * slices * stride, stream, values, rows,
                 groups, scores, selections, expand, value_dim, cores, groups_per_block, slices, y);
    return;
  }
  const size_t smem = sizeof(float) * expand * value_dim;
  LaunchKernel(DevicePoolKernel, dim3(tokens), dim3(kThreads), smem, stream, values, rows, groups,
               scores, selections, expand, value_dim, cores, y);
}

void LaunchToBf16(const float* in, int64_t count, __nv_bfloat16* out, cudaStream_t stream) {
  if (count == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((count + 255) / 256, 4096));
  LaunchKernel(ToBf16Kernel, dim3(blocks), dim3(256), 0, stream, in, count, out);
}

}  // namespace ultramem::cuda
