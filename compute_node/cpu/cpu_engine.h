// The CPU engine: the reference backend, always built.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "compute_node/engine.h"

namespace ultramem {

absl::StatusOr<std::unique_ptr<Engine>> CreateCpuEngine(std::shared_ptr<const ModelWeights> weights,
                                                        RowPooler* pooler,
                                                        const EngineOptions& options);

}  // namespace ultramem
