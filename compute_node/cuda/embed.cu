// Implementation of embed.cuh: one block per token, columns across threads.
#include "compute_node/cuda/embed.cuh"

#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static __global__ void EmbedKernel(const __nv_bfloat16* table, const int32_t* ids, int dim,
                                   float* x) {
  GridDependencyWait();
  AllowDependents();
  const int t = blockIdx.x;
  const __nv_bfloat16* row = table + static_cast<int64_t>(ids[t]) * dim;
  float* out = x + static_cast<int64_t>(t) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = __bfloat162float(row[i]);
}

void LaunchEmbed(const __nv_bfloat16* table, const int32_t* ids, int tokens, int dim, float* x,
                 cudaStream_t stream) {
  if (tokens == 0) return;
  LaunchKernel(EmbedKernel, dim3(tokens), dim3(256), 0, stream, table, ids, dim, x);
}

}  // namespace ultramem::cuda
