// Implementation of compute_node/model_runtime.h.
#include "compute_node/model_runtime.h"

#include "common/status.h"
#include "compute_node/in_process_pooler.h"

namespace ultramem {

absl::StatusOr<std::unique_ptr<ModelRuntime>> OpenModelRuntime(const ModelRuntimeOptions& options) {
  auto rt = std::make_unique<ModelRuntime>();
  UM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(options.model_dir));
  rt->checkpoint = std::move(ckpt);
  UM_ASSIGN_OR_RETURN(rt->weights, LoadModelWeights(*rt->checkpoint));
  UM_ASSIGN_OR_RETURN(rt->tokenizer, ByteTokenizer::Create(rt->checkpoint->config()));
  if (rt->checkpoint->config().NumMemoryLayers() > 0) {
    UM_ASSIGN_OR_RETURN(std::unique_ptr<InProcessPooler> pooler,
                        InProcessPooler::Create(rt->checkpoint));
    rt->pooler = std::move(pooler);
  }
  UM_ASSIGN_OR_RETURN(rt->engine, CreateEngine(rt->weights, rt->pooler.get(), options.engine));
  return rt;
}

}  // namespace ultramem
