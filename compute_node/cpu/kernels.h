// The CPU backend's numeric kernels (float32, AVX2 through the compiler plus OpenBLAS for the
// large products). Each states its layout; all are deterministic for a fixed thread count.
#pragma once

#include <cstdint>

#include "compute_node/cpu/thread_pool.h"

namespace ultramem {

// y[T, out] = x[T, in] · W[out, in]ᵀ (+ y when accumulate). Splits the output features across
// the pool; OpenBLAS itself runs single-threaded inside each part.
void MatMulWT(ThreadPool& pool, const float* x, int64_t tokens, const float* w, int64_t out_dim,
              int64_t in_dim, float* y, bool accumulate = false);

// out[i] = x[i] / sqrt(mean(x²) + eps) * w[i]; out may alias x.
void RmsNorm(const float* x, const float* w, int64_t dim, float eps, float* out);

// Rotate-half RoPE on one head vector of width head_dim at `position`, using the precomputed
// inverse frequencies inv_freq[head_dim/2].
void ApplyRope(float* head, int head_dim, int64_t position, const float* inv_freq);

// gate[i] = silu(gate[i]) * up[i] for i < n.
void SiluMul(float* gate, const float* up, int64_t n);

float Dot(const float* a, const float* b, int64_t n);
// y[i] += a * x[i]
void Axpy(float a, const float* x, float* y, int64_t n);

}  // namespace ultramem
