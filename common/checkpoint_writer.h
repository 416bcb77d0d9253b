// Writing whole model directories (MODEL.md §4): config.json serialization and reproducible random
// checkpoints, for tests, benchmarks and toy models. The reader side is common/checkpoint.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "common/model_config.h"
#include "common/safetensors_writer.h"
#include "common/synthetic_values.h"

namespace ultramem {

// config.json text for `config`; ParseModelConfig reads it back to an equal config. The tokenizer
// object is tokenizer.raw_json when that parses as an object (with type and special_tokens
// overwritten from the struct), else built from the struct.
std::string ModelConfigToJson(const ModelConfig& config);

struct RandomCheckpointOptions {
  DType float_dtype = DType::kF32;    // every float tensor (F32, BF16 or F16)
  DType shuffle_dtype = DType::kI64;  // memory.{j}.shuffle_index (I32 or I64)
  uint64_t seed = 1;                  // same seed and config: same bytes
  // Weights uniform in [-scale, scale]; norm weights 1 + that. Small so that activations of a
  // random model stay O(1) through many layers.
  float scale = 0.05f;
  // false: one model.safetensors. true: memory.{j}.values in model-values-{j}.safetensors (what a
  // memory server opens), everything else in model-dense.safetensors, plus
  // model.safetensors.index.json.
  bool split_files = false;
  // Set: no memory.{j}.values tensors; synthetic_values.json declares them instead
  // (common/synthetic_values.h), for benchmarks with tables too large for a file.
  std::optional<SyntheticValues> synthetic_values;
};

// One tensor per ExpectedTensors(config) entry, in that order: random reproducible weights and a
// random permutation for each shuffle_index.
std::vector<TensorToWrite> MakeRandomTensors(const ModelConfig& config,
                                             const RandomCheckpointOptions& options = {});

// Creates `dir` if needed and writes config.json plus `tensors` (placed as `split_files` says;
// within a file, widest dtype first so that every tensor is aligned to its element size).
// Tensors are written as given, even when they disagree with the config: tests use this to build
// malformed checkpoints.
absl::Status WriteCheckpoint(const std::string& dir, const ModelConfig& config,
                             const std::vector<TensorToWrite>& tensors, bool split_files);

// MakeRandomTensors + WriteCheckpoint (+ synthetic_values.json when options ask for it).
absl::Status WriteRandomCheckpoint(const std::string& dir, const ModelConfig& config,
                                   const RandomCheckpointOptions& options = {});

}  // namespace ultramem
