// The backend registry: the only file that knows which engine backends exist.
#include "absl/strings/str_cat.h"
#include "compute_node/cpu/cpu_engine.h"
#include "compute_node/engine.h"
#if ULTRAMEM_HAVE_CUDA
#include "compute_node/cuda/cuda_engine.h"
#endif

namespace ultramem {

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(std::shared_ptr<const ModelWeights> weights,
                                                     RowPooler* pooler,
                                                     const EngineOptions& options) {
  if (weights->config.NumMemoryLayers() > 0 && pooler == nullptr) {
    return absl::InvalidArgumentError("the model has memory layers but no RowPooler was given");
  }
  if (options.backend == "cpu") return CreateCpuEngine(std::move(weights), pooler, options);
#if ULTRAMEM_HAVE_CUDA
  if (options.backend == "cuda") return CreateCudaEngine(std::move(weights), pooler, options);
  constexpr const char* kBackends = "cpu, cuda";
#else
  constexpr const char* kBackends = "cpu";
#endif
  return absl::InvalidArgumentError(absl::StrCat("unknown engine backend '", options.backend,
                                                 "' (this build has: ", kBackends, ")"));
}

}  // namespace ultramem
