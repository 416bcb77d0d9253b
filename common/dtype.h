// Element types of checkpoint tensors and conversion of stored values to float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace ultramem {

enum class DType { kF32, kBF16, kF16, kI32, kI64 };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "BF16", "F16", "I32", "I64".
std::string_view DTypeName(DType dtype);
// Parses a safetensors dtype string; InvalidArgument for anything else (U8, F64, ...).
absl::StatusOr<DType> ParseDType(std::string_view name);
// F32, BF16 or F16.
bool IsFloatDType(DType dtype);

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
// IEEE half <-> float. F16ToF32 is exact (subnormals, infinities, NaN kept); F32ToF16 rounds to
// nearest even, overflows to infinity and keeps NaN a NaN (as _cvtss_sh / PyTorch do).
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// Converts `count` little-endian elements of a float dtype (F32, BF16, F16) at `src` to float32.
// `src` need not be aligned. Integer dtypes are not accepted (checked by the caller).
void ConvertToF32(DType dtype, const void* src, size_t count, float* dst);

}  // namespace ultramem
