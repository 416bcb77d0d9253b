// Where a token's KV cache lives, as the attention kernels see it. A sequence owns one device
// allocation laid out [layer][K|V][capacity][n_kv·hd] in bf16; each token of a step carries the
// base of its sequence's allocation, the capacity and its own position.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace ultramem::cuda {

struct TokenKv {
  __nv_bfloat16* base = nullptr;  // the sequence's cache
  int32_t capacity = 0;           // positions per (layer, K|V) plane
  int32_t position = 0;           // this token's position; it attends to 0..position
};

// K (side 0) or V (side 1) of `position` in `layer`.
__host__ __device__ inline __nv_bfloat16* KvRow(const TokenKv& kv, int layer, int side,
                                                int position, int width) {
  return kv.base + ((static_cast<int64_t>(layer) * 2 + side) * kv.capacity + position) * width;
}

}  // namespace ultramem::cuda
