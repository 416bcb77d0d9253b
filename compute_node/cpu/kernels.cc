// Implementation of compute_node/cpu/kernels.h.
#include "compute_node/cpu/kernels.h"

#include <cblas.h>

#include <cmath>

namespace ultramem {

void MatMulWT(ThreadPool& pool, const float* x, int64_t tokens, const float* w, int64_t out_dim,
              int64_t in_dim, float* y, bool accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  // Parts of at least 64 output features, so small products stay on one thread.
  pool.ParallelFor(out_dim, 64, [&](int64_t o0, int64_t o1) {
    const int64_t rows = o1 - o0;
    if (tokens == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, in_dim, 1.0f, w + o0 * in_dim, in_dim, x, 1,
                  beta, y + o0, 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, rows, in_dim, 1.0f, x, in_dim,
                  w + o0 * in_dim, in_dim, beta, y + o0, out_dim);
    }
  });
}

void RmsNorm(const float* x, const float* w, int64_t dim, float eps, float* out) {
  float sum = 0.0f;
  for (int64_t i = 0; i < dim; ++i) sum += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * scale * w[i];
}

void ApplyRope(float* head, int head_dim, int64_t position, const float* inv_freq) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    // Angles in double: positions up to 10^5 times frequencies near 1 lose digits in float.
    const double angle = static_cast<double>(position) * inv_freq[i];
    const float c = static_cast<float>(std::cos(angle));
    const float s = static_cast<float>(std::sin(angle));
    const float a = head[i];
    const float b = head[i + half];
    head[i] = a * c - b * s;
    head[i + half] = b * c + a * s;
  }
}

void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

float Dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void Axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace ultramem
