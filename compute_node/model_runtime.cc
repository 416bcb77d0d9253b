// Implementation of compute_node/model_runtime.h.
#include "compute_node/model_runtime.h"

#include "common/status.h"
#include "compute_node/in_process_pooler.h"
#include "compute_node/remote/shard_map.h"

namespace ultramem {

absl::StatusOr<std::unique_ptr<ModelRuntime>> OpenModelRuntime(const ModelRuntimeOptions& options) {
  auto rt = std::make_unique<ModelRuntime>();
  UM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(options.model_dir));
  rt->checkpoint = std::move(ckpt);
  UM_ASSIGN_OR_RETURN(rt->weights, LoadModelWeights(*rt->checkpoint));
  UM_ASSIGN_OR_RETURN(rt->tokenizer, ByteTokenizer::Create(rt->checkpoint->config()));
  if (!options.shard_map_path.empty()) {
    UM_ASSIGN_OR_RETURN(v1::ShardMap map, ReadShardMap(options.shard_map_path));
    UM_ASSIGN_OR_RETURN(std::unique_ptr<RemotePooler> remote,
                        RemotePooler::Create(rt->checkpoint->config(), map, options.remote));
    rt->remote = remote.get();
    rt->pooler = std::move(remote);
  } else if (rt->checkpoint->config().NumMemoryLayers() > 0) {
    UM_ASSIGN_OR_RETURN(std::unique_ptr<InProcessPooler> pooler,
                        InProcessPooler::Create(rt->checkpoint));
    rt->pooler = std::move(pooler);
  }
  EngineOptions engine_options = options.engine;
  // In-process mode: a backend that pools in its own device memory reads the tables from here.
  if (dynamic_cast<InProcessPooler*>(rt->pooler.get()) != nullptr) {
    engine_options.value_source = rt->checkpoint;
  }
  UM_ASSIGN_OR_RETURN(rt->engine, CreateEngine(rt->weights, rt->pooler.get(), engine_options));
  return rt;
}

}  // namespace ultramem
