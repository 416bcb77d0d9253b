// Tests of common/dtype.h: names, sizes, and the half/bfloat16 conversions against the hardware
// (F16C) conversions.
#include "common/dtype.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ultramem {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

TEST(DTypeTest, NamesAndSizesRoundTrip) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64}) {
    absl::StatusOr<DType> parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_TRUE(IsFloatDType(DType::kBF16));
  EXPECT_FALSE(IsFloatDType(DType::kI32));
}

TEST(DTypeTest, ParseRefusesOtherDTypes) {
  for (const char* name : {"U8", "F64", "BOOL", "f32", "", "F32 "}) {
    absl::StatusOr<DType> parsed = ParseDType(name);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
}

#if defined(__F16C__)
TEST(DTypeTest, F16ToF32MatchesHardwareOnAllValues) {
  for (uint32_t v = 0; v < 65536; ++v) {
    const float want = _cvtsh_ss(static_cast<uint16_t>(v));
    const float got = F16ToF32(static_cast<uint16_t>(v));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << v;
    } else {
      ASSERT_EQ(Bits(got), Bits(want)) << "half bits " << v;
    }
  }
}

TEST(DTypeTest, F32ToF16MatchesHardwareRoundToNearestEven) {
  std::vector<uint32_t> cases = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                 0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477ff001u, 0x38800000u,
                                 0x387fffffu, 0x33000000u, 0x33000001u, 0x32ffffffu, 0x33800000u,
                                 0x3f800000u, 0x3f801000u, 0x3f803000u, 0x3f802000u};
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) cases.push_back(rng());
  // Dense sweep of the subnormal / normal boundary region.
  for (uint32_t b = 0x33000000u; b < 0x39000000u; b += 0x1001u) cases.push_back(b);
  for (uint32_t b : cases) {
    const float f = FromBits(b);
    const uint16_t want = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    const uint16_t got = F32ToF16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(got))) << std::hex << b;
    } else {
      ASSERT_EQ(got, want) << "float bits 0x" << std::hex << b;
    }
  }
}
#endif

TEST(DTypeTest, Bf16RoundTripsAndRounds) {
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f)), 1.0f);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-2.5f)), -2.5f);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::nanf("")))));
}

// The vector paths against the scalar ones, at odd counts and unaligned sources.
TEST(DTypeTest, ConvertToF32BulkMatchesScalar) {
  std::mt19937 rng(3);
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (size_t count : {0u, 1u, 7u, 8u, 9u, 31u, 100u}) {
      const size_t size = DTypeSize(d);
      std::string raw(count * size + 1, '\0');
      for (char& c : raw) c = static_cast<char>(rng());
      const void* src = raw.data() + 1;  // unaligned on purpose
      std::vector<float> got(count + 1, -7.0f);
      ConvertToF32(d, src, count, got.data());
      for (size_t i = 0; i < count; ++i) {
        float want;
        if (d == DType::kF32) {
          std::memcpy(&want, raw.data() + 1 + 4 * i, 4);
        } else {
          uint16_t v;
          std::memcpy(&v, raw.data() + 1 + 2 * i, 2);
          want = d == DType::kBF16 ? Bf16ToF32(v) : F16ToF32(v);
        }
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got[i]));
        } else {
          EXPECT_EQ(Bits(got[i]), Bits(want)) << DTypeName(d) << " count " << count << " i " << i;
        }
      }
      EXPECT_EQ(got[count], -7.0f) << "wrote past the end";
    }
  }
}

}  // namespace
}  // namespace ultramem
