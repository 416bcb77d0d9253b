// Implementation of pool_kernel.cuh. One block per token; each thread owns 8 consecutive columns
// (one 16-byte load per selected row), keeps 4 row loads in flight, and accumulates per group in
// shared memory (threads own disjoint columns: no atomics), laid out [E][8][width / 8] so that a
// warp's threads hit consecutive banks (each thread's 8 columns side by side made every
// accumulation an 8-way bank conflict). For a few tokens the block is split
// into up to 4 slices over the token's selections (partial sums added at the end), otherwise
// selections are visited in order, as common/pooling.h's CPU kernel visits them. Chunk weights are
// constant over a thread's 8 columns when the chunk width and the first column are multiples of 8;
// otherwise a scalar kernel.
#include "memory_server/cuda/pool_kernel.cuh"

#include <algorithm>

#include "common/cuda/bf16.cuh"
#include "memory_server/cuda/cuda_check.h"

namespace ultramem::memory::cuda {
namespace {

using ::ultramem::cuda::Bf16x8ToFloat;

constexpr int kMaxThreads = 256;
constexpr int kFewTokens = 264;  // 2 blocks per SM of an H100/H200 (132 SMs)

__device__ __forceinline__ const __nv_bfloat16* Row(const PoolLaunch& p, int64_t slot) {
  return slot < p.num_slots ? p.table + slot * p.width : p.extra + (slot - p.num_slots) * p.width;
}

__device__ __forceinline__ void TokenRange(const PoolLaunch& p, int t, int64_t* begin,
                                           int64_t* end) {
  if (p.offsets != nullptr) {
    *begin = p.offsets[t];
    *end = p.offsets[t + 1];
  } else {
    *begin = static_cast<int64_t>(t) * p.selections;
    *end = *begin + p.selections;
  }
}

// blockDim.x = slices × threads_per_slice. Slice s pools its contiguous share of the token's
// selections into its own accumulators; the slices are summed at the end (in slice order). More
// slices put more loads in flight for a few tokens (latency-bound), at the cost of shared memory.
__global__ void __launch_bounds__(kMaxThreads) PoolVec8Kernel(const PoolLaunch p, int slices) {
  extern __shared__ float acc[];  // [slices][E][8][width / 8]
  const int t = blockIdx.x;
  const int n = p.expand * p.width, vecs = p.width / 8;
  for (int e = threadIdx.x; e < slices * n; e += blockDim.x) acc[e] = 0.0f;
  __syncthreads();
  int64_t token_begin, token_end;
  TokenRange(p, t, &token_begin, &token_end);
  const int per_slice = blockDim.x / slices;
  const int slice = threadIdx.x / per_slice;
  const int64_t share = (token_end - token_begin + slices - 1) / slices;
  const int64_t first = token_begin + slice * share;
  const int64_t begin = first < token_end ? first : token_end;
  const int64_t end = begin + share < token_end ? begin + share : token_end;
  float* my_acc = acc + slice * n;
  for (int c8 = (threadIdx.x - slice * per_slice) * 8; c8 < p.width; c8 += per_slice * 8) {
    const int core = (p.col_begin + c8) / p.chunk;
    int64_t k = begin;
    for (; k + 4 <= end; k += 4) {
      uint4 raw[4];
      int64_t slot[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        slot[u] = p.slots[k + u];
        raw[u] = slot[u] >= 0 ? *reinterpret_cast<const uint4*>(Row(p, slot[u]) + c8)
                              : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (slot[u] < 0) continue;
        const float w = p.scores[(k + u) * p.cores + core];
        float* a = my_acc + p.groups[k + u] * p.width + c8 / 8;
        float f[8];
        Bf16x8ToFloat(raw[u], f);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i * vecs] += w * f[i];
      }
    }
    for (; k < end; ++k) {
      const int64_t slot = p.slots[k];
      if (slot < 0) continue;
      const float w = p.scores[k * p.cores + core];
      float* a = my_acc + p.groups[k] * p.width + c8 / 8;
      float f[8];
      Bf16x8ToFloat(*reinterpret_cast<const uint4*>(Row(p, slot) + c8), f);
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i * vecs] += w * f[i];
    }
  }
  __syncthreads();
  float* y = p.out + static_cast<int64_t>(t) * n;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int g = e / p.width, c = e - g * p.width;
    const int at = g * p.width + (c % 8) * vecs + c / 8;
    float sum = acc[at];
    for (int s = 1; s < slices; ++s) sum += acc[s * n + at];
    y[e] = sum;
  }
}

__global__ void __launch_bounds__(kMaxThreads) PoolScalarKernel(const PoolLaunch p) {
  extern __shared__ float acc[];
  const int t = blockIdx.x;
  const int n = p.expand * p.width;
  for (int e = threadIdx.x; e < n; e += blockDim.x) acc[e] = 0.0f;
  __syncthreads();
  int64_t begin, end;
  TokenRange(p, t, &begin, &end);
  for (int64_t k = begin; k < end; ++k) {
    const int64_t slot = p.slots[k];
    if (slot < 0) continue;
    const __nv_bfloat16* row = Row(p, slot);
    float* a = acc + p.groups[k] * p.width;
    for (int c = threadIdx.x; c < p.width; c += blockDim.x) {
      a[c] += p.scores[k * p.cores + (p.col_begin + c) / p.chunk] * __bfloat162float(row[c]);
    }
  }
  __syncthreads();
  float* y = p.out + static_cast<int64_t>(t) * n;
  for (int e = threadIdx.x; e < n; e += blockDim.x) y[e] = acc[e];
}

__global__ void CopyRowsKernel(const uint4* src, const int64_t* dst, int n, int vecs_per_row,
                               uint4* table) {
  const int i = blockIdx.x;
  if (i >= n || dst[i] < 0) return;
  for (int v = threadIdx.x; v < vecs_per_row; v += blockDim.x) {
    table[dst[i] * vecs_per_row + v] = src[static_cast<int64_t>(i) * vecs_per_row + v];
  }
}

__global__ void CopyRowsScalarKernel(const uint16_t* src, const int64_t* dst, int n, int width,
                                     uint16_t* table) {
  const int i = blockIdx.x;
  if (i >= n || dst[i] < 0) return;
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    table[dst[i] * width + c] = src[static_cast<int64_t>(i) * width + c];
  }
}

bool Vectorized(const PoolLaunch& p) {
  return p.width % 8 == 0 && p.chunk % 8 == 0 && p.col_begin % 8 == 0;
}

}  // namespace

size_t PoolSharedBytes(int expand, int width) {
  return sizeof(float) * static_cast<size_t>(expand) * width;
}

absl::Status PreparePoolKernels(size_t bytes) {
  if (bytes <= 48 * 1024) return absl::OkStatus();
  int device = 0, limit = 0;
  MS_CUDA_CHECK(cudaGetDevice(&device));
  MS_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (bytes > static_cast<size_t>(limit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the pooling kernel keeps E x width fp32 accumulators in shared memory: ", bytes,
        " bytes, the device gives a block at most ", limit));
  }
  MS_CUDA_CHECK(cudaFuncSetAttribute(PoolVec8Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
  MS_CUDA_CHECK(cudaFuncSetAttribute(PoolScalarKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
  return absl::OkStatus();
}

absl::Status LaunchPool(const PoolLaunch& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return absl::OkStatus();
  const size_t smem = PoolSharedBytes(p.expand, p.width);
  if (Vectorized(p)) {
    // One thread per 8 columns, in whole warps, at most kMaxThreads (then threads loop). With
    // fewer tokens than ~2 blocks per SM, up to 4 slices per token while the block and its
    // accumulators stay within kMaxThreads and the default 48 KiB of shared memory.
    const int threads = std::min(kMaxThreads, std::max(32, (p.width / 8 + 31) / 32 * 32));
    int slices = 1;
    if (p.num_tokens < kFewTokens) {
      while (slices < 4 && 2 * slices * threads <= kMaxThreads && 2 * slices * smem <= 48 * 1024) {
        slices *= 2;
      }
    }
    PoolVec8Kernel<<<p.num_tokens, slices * threads, slices * smem, stream>>>(p, slices);
  } else {
    PoolScalarKernel<<<p.num_tokens, 128, smem, stream>>>(p);
  }
  MS_CUDA_CHECK(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCopyRows(const __nv_bfloat16* src, const int64_t* dst, int n, int width,
                            __nv_bfloat16* table, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  if (width % 8 == 0) {
    CopyRowsKernel<<<n, 64, 0, stream>>>(reinterpret_cast<const uint4*>(src), dst, n, width / 8,
                                         reinterpret_cast<uint4*>(table));
  } else {
    CopyRowsScalarKernel<<<n, 128, 0, stream>>>(reinterpret_cast<const uint16_t*>(src), dst, n,
                                                width, reinterpret_cast<uint16_t*>(table));
  }
  MS_CUDA_CHECK(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace ultramem::memory::cuda
