// Skinny products for decode steps of a few tokens: y[T, out] (+)= x[T, in] · W[out, in]ᵀ with
// bf16 x and W, fp32 accumulation and output, T <= kMaxGemvTokens, in % 8 == 0. One warp per
// output row, 16-byte loads: the weight matrix is streamed once at close to copy bandwidth
// (cuBLAS's general kernels are tuned for wide products).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ultramem::cuda {

inline constexpr int kMaxGemvTokens = 8;

void LaunchGemvBf16(const __nv_bfloat16* x, int tokens, const __nv_bfloat16* w, int out_dim,
                    int in_dim, float* y, bool accumulate, cudaStream_t stream);

}  // namespace ultramem::cuda
