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
#include "compute_node/remote/remote_pooler.h"
#include "compute_node/row_pooler.h"
#include "compute_node/tokenizer.h"

namespace ultramem {

struct ModelRuntimeOptions {
  std::string model_dir;
  EngineOptions engine;
  // When set, memory layers are served by the memory servers this shard map names (the value
  // tables are then never read from model_dir); otherwise in-process.
  std::string shard_map_path;
  RemotePoolerOptions remote;
};

struct ModelRuntime {
  std::shared_ptr<const Checkpoint> checkpoint;
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<RowPooler> pooler;  // declared before engine: destroyed after it
  RemotePooler* remote = nullptr;     // = pooler when it is remote
  std::unique_ptr<Engine> engine;
  ByteTokenizer tokenizer;
};

absl::StatusOr<std::unique_ptr<ModelRuntime>> OpenModelRuntime(const ModelRuntimeOptions& options);

}  // namespace ultramem
