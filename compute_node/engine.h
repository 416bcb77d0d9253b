// The inference engine interface: the whole forward of MODEL.md §2–3 over a batch of sequences.
// One interface, one factory; backends (cpu/, later cuda/) implement it and a registry picks one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model_config.h"
#include "compute_node/model_weights.h"
#include "compute_node/row_pooler.h"

namespace ultramem {

// A sequence's state in one engine: its KV cache and the number of tokens it holds. Created by
// Engine::NewSequence; used by one Forward at a time; destroyed by its owner.
class Sequence {
 public:
  virtual ~Sequence() = default;
  int64_t length() const { return length_; }
  // Bytes of KV cache currently held.
  virtual int64_t CacheBytes() const = 0;

 protected:
  int64_t length_ = 0;
  friend class CpuEngine;
};

struct SequenceInput {
  Sequence* sequence = nullptr;
  absl::Span<const int32_t> tokens;  // appended at positions length() .. length()+size-1
  bool all_logits = false;           // logits of every new token, else only of the last one
};

struct ForwardOutput {
  // Rows in batch order: each input contributes tokens.size() rows when all_logits, else one.
  std::vector<float> logits;  // [rows, V]
  int64_t rows = 0;
  // When requested: the selected t = shuffle_index[virtual] per memory layer, [J, total tokens,
  // H·m] in selection order (k = head·m + rank); tokens in batch order.
  std::vector<int64_t> selections;
};

struct ForwardOptions {
  bool record_selections = false;
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::unique_ptr<Sequence> NewSequence() = 0;
  // Runs every input's new tokens (prefill chunks and decode steps may be mixed). Token ids must
  // be in [0, V) and positions below max_position_embeddings (INVALID_ARGUMENT otherwise); a
  // failed memory lookup returns its status (UNAVAILABLE, DEADLINE_EXCEEDED, ...). On any error
  // no sequence changes length.
  virtual absl::Status Forward(absl::Span<const SequenceInput> batch, const ForwardOptions& options,
                               ForwardOutput* out) = 0;
};

struct EngineOptions {
  std::string backend = "cpu";  // "cpu"; "cuda" when built with CUDA
  int num_threads = 0;          // CPU threads; 0 = one per core
  // Optional: the checkpoint the weights came from. A backend that can hold the value tables in
  // its own device memory (cuda) reads memory.{j}.values from here and pools there, leaving the
  // RowPooler unused (fastest when the tables fit the device); null: every lookup goes through
  // the RowPooler. The CPU backend ignores it.
  std::shared_ptr<const Checkpoint> value_source;
  // cuda: replay decode steps (one token per sequence) from CUDA graphs captured per batch size.
  // Off: every step is enqueued kernel by kernel (slower at small batches; for comparison).
  bool cuda_graphs = true;
};

// The checks every backend's Forward makes before touching state: a non-empty batch, each entry
// with a sequence and tokens in [0, V), positions within max_position_embeddings, no sequence
// twice. INVALID_ARGUMENT naming the entry otherwise.
absl::Status ValidateBatch(absl::Span<const SequenceInput> batch, const ModelConfig& config);

// The one place that knows which backends exist. `pooler` must outlive the engine; it may be
// null for a model without memory layers.
absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(std::shared_ptr<const ModelWeights> weights,
                                                     RowPooler* pooler,
                                                     const EngineOptions& options);

}  // namespace ultramem
