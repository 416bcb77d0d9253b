// SwiGLU activation: act[t, i] = bf16(silu(gate_up[t, i]) * gate_up[t, F + i]) for i < F.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ultramem::cuda {

void LaunchSwiGlu(const float* gate_up, int tokens, int ffn_dim, __nv_bfloat16* act,
                  cudaStream_t stream);

}  // namespace ultramem::cuda
