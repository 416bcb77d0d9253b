// Synthetic value tables for benchmarks at scales no checkpoint file can hold (issue #8: 144 GiB of
// values): memory.{j}.values[row, col] is a pure function of (seed, j, row, col), so a memory
// server can fill its GPU slots in place and a compute node can check it pools the same rows.
//
// A model directory declares synthetic values with a file `synthetic_values.json`
// ({"seed": 7, "scale": 0.05}) beside config.json; its safetensors then hold every tensor of
// MODEL.md §4 except memory.{j}.values. Checkpoint::Open accepts it and serves the values through
// Checkpoint::ReadF32Block / ReadF32; Checkpoint::Get("memory.{j}.values") is NotFound.
//
// The function is usable from CUDA code (host and device): include this header from a .cu file.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define UM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UM_HOST_DEVICE inline
#endif

namespace ultramem {

inline constexpr char kSyntheticValuesFile[] = "synthetic_values.json";

struct SyntheticValues {
  uint64_t seed = 0;
  float scale = 0.05f;  // values uniform in [-scale, scale), rounded to bf16
};

// splitmix64's finalizer: a bijection of 64-bit words with full avalanche.
UM_HOST_DEVICE uint64_t SyntheticMix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// The bf16 bits of memory.{layer}.values[row, col] (round to nearest even from float32).
UM_HOST_DEVICE uint16_t SyntheticValueBf16(uint64_t seed, float scale, int layer, int64_t row,
                                           int col) {
  const uint64_t key = SyntheticMix64(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(layer + 1)) ^
                       (static_cast<uint64_t>(row) << 16) ^ static_cast<uint64_t>(col);
  const uint64_t h = SyntheticMix64(key);
  // 24 random bits -> [-1, 1).
  const float u = static_cast<float>(static_cast<int32_t>(h >> 40) - (1 << 23)) * (1.0f / (1 << 23));
  const float v = u * scale;
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(v);
#else
  std::memcpy(&bits, &v, sizeof bits);
#endif
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // finite inputs only: |v| <= scale
  return static_cast<uint16_t>(bits >> 16);
}

// Host fill of rows [row_begin, row_end) x columns [col_begin, col_end) of layer `layer`,
// row-major, as bf16 bits.
inline void FillSyntheticBf16(const SyntheticValues& s, int layer, int64_t row_begin,
                              int64_t row_end, int col_begin, int col_end, uint16_t* out) {
  const int width = col_end - col_begin;
  for (int64_t r = row_begin; r < row_end; ++r) {
    uint16_t* dst = out + (r - row_begin) * width;
    for (int c = col_begin; c < col_end; ++c) {
      dst[c - col_begin] = SyntheticValueBf16(s.seed, s.scale, layer, r, c);
    }
  }
}

}  // namespace ultramem
