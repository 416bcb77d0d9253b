// Token sampling from logits: greedy, temperature, top-k, top-p, reproducible with a seed.
#pragma once

#include <cstdint>
#include <random>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace ultramem {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, ties to the lower id)
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;         // the same seed and logits give the same tokens

  // INVALID_ARGUMENT for temperature < 0 or non-finite, top_k < 0, top_p outside (0, 1].
  absl::Status Validate() const;
};

// One sequence's sampler; owns its random stream.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t Sample(absl::Span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace ultramem
