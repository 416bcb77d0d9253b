// Implementation of common/dtype.h: dtype names and sizes, and the float16/bfloat16 -> float32
// conversions used when a checkpoint is loaded (hundreds of MB, so the bulk path is vectorized).
#include "common/dtype.h"

#include <bit>

#include "absl/strings/str_cat.h"
#include "common/absl_compat.h"

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace ultramem {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "I32") return DType::kI32;
  if (name == "I64") return DType::kI64;
  // Keep the echoed name short: it may come from an untrusted header.
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported dtype \"", ToAbsl(name.substr(0, 32)), name.size() > 32 ? "..." : "",
      "\" (expected F32, BF16, F16, I32 or I64)"));
}

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

float F16ToF32(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  const uint32_t exponent = (v >> 10) & 0x1fu;
  uint32_t mantissa = v & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    // Inf or NaN; NaN payload kept (shifted into the float mantissa), so NaN stays NaN.
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else if (mantissa == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: normalize. value = mantissa * 2^-24.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to infinity
  if (abs < 0x38800000u) {
    // Result is a half subnormal (or zero): value / 2^-24, rounded to nearest even.
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14..24
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  // Normal: rebias 127 -> 15 and round the 13 dropped mantissa bits to nearest even. A carry out of
  // the mantissa correctly bumps the exponent.
  uint32_t rebased = abs - (112u << 23);
  rebased += 0x0fffu + ((rebased >> 13) & 1u);
  return sign | static_cast<uint16_t>(rebased >> 13);
}

void ConvertToF32(DType dtype, const void* src, size_t count, float* dst) {
  if (count == 0) return;
  const uint8_t* in = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, in, count * sizeof(float));
      return;
    case DType::kBF16: {
      size_t i = 0;
#if defined(__AVX2__)
      for (; i + 8 <= count; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
        const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
      }
#endif
      for (; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, in + 2 * i, sizeof(v));
        dst[i] = Bf16ToF32(v);
      }
      return;
    }
    case DType::kF16: {
      size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
      for (; i + 8 <= count; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
      }
#endif
      for (; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, in + 2 * i, sizeof(v));
        dst[i] = F16ToF32(v);
      }
      return;
    }
    case DType::kI32:
    case DType::kI64:
      break;  // Not a float dtype: the caller checks; leave dst untouched.
  }
}

}  // namespace ultramem
