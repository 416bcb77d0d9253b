// Everything a program needs to run a model from a directory: checkpoint, weights, the row
// pooler (in-process now; remote with a shard map), the engine and the tokenizer, with their
// lifetimes tied together.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "compute_node/engine.h"
#include "compute_node/model_weights.h"
#include "compute_node/row_pooler.h"
#include "compute_node/tokenizer.h"

namespace ultramem {

struct ModelRuntimeOptions {
  std::string model_dir;
  EngineOptions engine;
};

struct ModelRuntime {
  std::shared_ptr<const Checkpoint> checkpoint;
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<RowPooler> pooler;  // declared before engine: destroyed after it
  std::unique_ptr<Engine> engine;
  ByteTokenizer tokenizer;
};

absl::StatusOr<std::unique_ptr<ModelRuntime>> OpenModelRuntime(const ModelRuntimeOptions& options);

}  // namespace ultramem
