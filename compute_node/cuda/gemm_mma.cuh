// Skinny products on the tensor cores for steps of 9..64 tokens, where the CUDA-core GEMV runs out
// of arithmetic and cuBLAS picks split-K kernels plus a reduction: y[T, out] (+)= x[T, in]·Wᵀ, or
// the SwiGLU activation (GemvArgs as in gemv.cuh; the input must be bf16 x, no fused norm).
// Each block owns 16 weight rows (16 gate and 16 up rows for kSwiGlu) and splits K over 8 warps;
// each warp streams its rows with 16-byte loads straight into mma.sync A fragments (K permuted
// identically in A and B, which a dot product allows), reads x from L2/L1, and the warps' partial
// sums meet in shared memory. Requires in % 32 == 0 and T <= kMaxMmaTokens.
#pragma once

#include <cuda_runtime.h>

#include "compute_node/cuda/gemv.cuh"

namespace ultramem::cuda {

inline constexpr int kMaxMmaTokens = 64;  // what the kernel supports

// Up to where callers prefer it to cuBLAS. At 64 tokens it measured slower (H200, 2026-11-28:
// batch-64 decode step 1211 us against 912 us with cuBLAS): each block reads all of x from L2 for
// its 16 weight rows, 4x the weight bytes at 64 tokens. At 16 tokens it is the faster path.
inline constexpr int kMmaPreferredMaxTokens = 16;

// False when the environment sets UM_CUDA_MMA=0 (then callers use cuBLAS; read once).
bool GemmMmaEnabled();

void LaunchGemmMma(const GemvArgs& args, cudaStream_t stream);

}  // namespace ultramem::cuda
