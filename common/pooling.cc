// Implementation of common/pooling.h: a plain loop the compiler vectorizes (AVX2/FMA).
#include "common/pooling.h"

#include <algorithm>
#include <cstring>

#include "common/dtype.h"

namespace ultramem {
namespace {

template <typename Row, typename Load>
void Pool(const PoolShape& s, const Row* const* rows, const int32_t* groups, const float* scores,
          float* out, Load load) {
  const int width = s.col_end - s.col_begin;
  const int chunk = s.value_dim / s.cores;
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(s.num_tokens) * s.expand * width);
  for (int t = 0; t < s.num_tokens; ++t) {
    float* y_token = out + static_cast<size_t>(t) * s.expand * width;
    for (int k = 0; k < s.selections; ++k) {
      const size_t sel = static_cast<size_t>(t) * s.selections + k;
      const Row* row = rows[sel];
      if (row == nullptr) continue;
      float* y = y_token + static_cast<size_t>(groups[sel]) * width;
      const float* w = scores + sel * s.cores;
      // Walk the column range chunk by chunk so the weight is constant in the inner loop.
      for (int col = s.col_begin; col < s.col_end;) {
        const int c = col / chunk;
        const int stop = std::min(s.col_end, (c + 1) * chunk);
        const float wc = w[c];
        const int base = col - s.col_begin;
        const int len = stop - col;
        for (int i = 0; i < len; ++i) y[base + i] += wc * load(row[base + i]);
        col = stop;
      }
    }
  }
}

}  // namespace

void PoolRowsF32(const PoolShape& shape, const float* const* rows, const int32_t* groups,
                 const float* scores, float* out) {
  Pool(shape, rows, groups, scores, out, [](float v) { return v; });
}

void PoolRowsBf16(const PoolShape& shape, const uint16_t* const* rows, const int32_t* groups,
                  const float* scores, float* out) {
  Pool(shape, rows, groups, scores, out, [](uint16_t v) { return Bf16ToF32(v); });
}

}  // namespace ultramem
