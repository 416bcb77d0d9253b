// The CUDA implementation of memory_server/gpu_hot_tier.h, reached only through
// memory_server/device_registry.cc. No CUDA type appears here.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "memory_server/gpu_hot_tier.h"

namespace ultramem::memory::cuda {

// OK when CUDA device `index` exists; FailedPrecondition naming the reason otherwise.
absl::Status CheckCudaDevice(int index);
absl::StatusOr<std::unique_ptr<GpuHotTier>> CreateCudaHotTier(const GpuHotTierOptions& options);

}  // namespace ultramem::memory::cuda
