// Implementation of rope.cuh: one block per token; each thread rotates (head, i) pairs.
#include "compute_node/cuda/rope.cuh"

#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {

static __global__ void RopeAndCacheKernel(float* qkv, const TokenKv* kv, const float2* rope,
                                          int num_heads, int num_kv_heads, int head_dim,
                                          int layer) {
  GridDependencyWait();
  AllowDependents();
  const int t = blockIdx.x;
  const int half = head_dim / 2;
  const int width = num_kv_heads * head_dim;
  const TokenKv tok = kv[t];
  float* row = qkv + static_cast<int64_t>(t) * (num_heads + 2 * num_kv_heads) * head_dim;
  const float2* cs = rope + static_cast<int64_t>(tok.position) * half;
  __nv_bfloat16* k_out = KvRow(tok, layer, 0, tok.position, width);
  __nv_bfloat16* v_out = KvRow(tok, layer, 1, tok.position, width);
  const int rotated = (num_heads + num_kv_heads) * half;
  for (int e = threadIdx.x; e < rotated; e += blockDim.x) {
    const int head = e / half;
    const int i = e - head * half;
    float* h = row + head * head_dim;
    const float a = h[i], b = h[i + half];
    const float2 c = cs[i];
    const float ra = a * c.x - b * c.y;
    const float rb = b * c.x + a * c.y;
    if (head < num_heads) {
      h[i] = ra;
      h[i + half] = rb;
    } else {
      const int kh = head - num_heads;
      k_out[kh * head_dim + i] = __float2bfloat16(ra);
      k_out[kh * head_dim + i + half] = __float2bfloat16(rb);
    }
  }
  const float* v = row + (num_heads + num_kv_heads) * head_dim;
  for (int e = threadIdx.x; e < width; e += blockDim.x) v_out[e] = __float2bfloat16(v[e]);
}

void LaunchRopeAndCache(float* qkv, const TokenKv* kv, const float2* rope, int tokens,
                        int num_heads, int num_kv_heads, int head_dim, int layer,
                        cudaStream_t stream) {
  if (tokens == 0) return;
  LaunchKernel(RopeAndCacheKernel, dim3(tokens), dim3(128), 0, stream, qkv, kv, rope, num_heads,
               num_kv_heads, head_dim, layer);
}

}  // namespace ultramem::cuda
