// Implementation of swiglu.cuh: elementwise over [tokens, F].
#include "compute_node/cuda/swiglu.cuh"

#include <cstdint>

#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static __global__ void SwiGluKernel(const float* gate_up, int64_t total, int ffn_dim,
                                    __nv_bfloat16* act) {
  GridDependencyWait();
  AllowDependents();
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / ffn_dim;
    const int64_t i = e - t * ffn_dim;
    const float* row = gate_up + t * 2 * ffn_dim;
    const float g = row[i];
    act[e] = __float2bfloat16(g / (1.0f + __expf(-g)) * row[ffn_dim + i]);
  }
}

void LaunchSwiGlu(const float* gate_up, int tokens, int ffn_dim, __nv_bfloat16* act,
                  cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(tokens) * ffn_dim;
  if (total == 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 4096));
  LaunchKernel(SwiGluKernel, dim3(blocks), dim3(threads), 0, stream, gate_up, total, ffn_dim, act);
}

}  // namespace ultramem::cuda
