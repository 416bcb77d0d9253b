// What every engine backend shares: checking a batch against the model before any state changes.
#include "compute_node/engine.h"

#include "absl/strings/str_cat.h"

namespace ultramem {

absl::Status ValidateBatch(absl::Span<const SequenceInput> batch, const ModelConfig& config) {
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  const int64_t V = config.vocab_size;
  for (size_t b = 0; b < batch.size(); ++b) {
    const SequenceInput& in = batch[b];
    if (in.sequence == nullptr) return absl::InvalidArgumentError("batch entry without a sequence");
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " has no tokens"));
    }
    const int64_t end = in.sequence->length() + static_cast<int64_t>(in.tokens.size());
    if (end > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, ": ", end,
                                                     " positions exceed max_position_embeddings ",
                                                     config.max_position_embeddings));
    }
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      if (in.tokens[i] < 0 || in.tokens[i] >= V) {
        return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, ": token ", in.tokens[i],
                                                       " at index ", i, " is outside [0, ", V, ")"));
      }
    }
    for (size_t c = 0; c < b; ++c) {
      if (batch[c].sequence == in.sequence) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence appears twice in the batch (entries ", c, " and ", b, ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ultramem
