// The latency floor of a chain of dependent kernels on this device: how many microseconds each
// kernel of a CUDA graph costs when it only waits for its predecessor, reads one value that the
// predecessor wrote (in every block) and writes one. A decode step at batch 1 is such a chain
// (about five kernels per transformer block), so this bounds what any per-op design can reach.
#pragma once

#include "absl/status/statusor.h"

namespace ultramem::cuda {

struct ChainProbe {
  double plain_us = 0;        // ordinary launches
  double pdl_us = 0;          // programmatic dependent launch, next kernel released after the wait
  double pdl_early_us = 0;    // PDL, next kernel released before the wait (as the staged GEMV)
  // As pdl_early_us with 2 us of work before each kernel's wait: about 2 if a kernel's prologue
  // can only overlap its predecessor, well below if kernels further down the chain start early.
  double pdl_sleep_us = 0;
};

// µs per kernel over a graph of `kernels` dependent kernels of `blocks` blocks each (median of
// `iters` replays).
absl::StatusOr<ChainProbe> MeasureKernelChain(int kernels, int blocks, int iters);

// The four dense products of `layers` transformer blocks (qkv with its RMSNorm, wo, gate/up with
// its RMSNorm and SwiGLU, down; one token; each block its own weights, zero-filled) as one graph
// with PDL, as a decode step at batch 1 runs them without attention: µs a block for the staged
// GEMV and for the register GEMV.
struct GemvChainProbe {
  double staged_us = 0;
  double register_us = 0;
};
absl::StatusOr<GemvChainProbe> MeasureGemvChain(int model_dim, int ffn_dim, int qkv_width, int layers, int iters);

}  // namespace ultramem::cuda
