// Implementation of compute_node/sampler.h.
#include "compute_node/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ultramem {

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  const int n = static_cast<int>(logits.size());
  if (params_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int keep = n;
  if (params_.top_k > 0 && params_.top_k < n) keep = params_.top_k;
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), better);
  std::vector<double> probs(keep);
  const double max_logit = logits[idx[0]];
  double sum = 0.0;
  for (int i = 0; i < keep; ++i) {
    probs[i] = std::exp((logits[idx[i]] - max_logit) / params_.temperature);
    sum += probs[i];
  }
  if (params_.top_p < 1.0f) {
    // Smallest prefix (in descending order) whose mass reaches top_p.
    double mass = 0.0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
      mass += probs[i] / sum;
      if (mass >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  std::uniform_real_distribution<double> uniform(0.0, sum);
  double target = uniform(rng_);
  for (int i = 0; i < keep; ++i) {
    target -= probs[i];
    if (target <= 0.0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace ultramem
