// The one place that knows which hot-tier devices this build has (memory_server/gpu_hot_tier.h):
// CUDA when the build found nvcc (memory_server/cuda/), nothing else.
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "memory_server/gpu_hot_tier.h"
#if ULTRAMEM_HAVE_CUDA
#include "memory_server/cuda/cuda_hot_tier.h"
#endif

namespace ultramem::memory {
namespace {
GpuHotTierFactory& TestingFactory() {
  static GpuHotTierFactory* factory = new GpuHotTierFactory();
  return *factory;
}
}  // namespace

void SetGpuHotTierFactoryForTesting(GpuHotTierFactory factory) {
  TestingFactory() = std::move(factory);
}

absl::StatusOr<DeviceSpec> ParseDevice(absl::string_view text) {
  DeviceSpec spec;
  if (text == "cpu") return spec;
  if (text == "cuda" || text.substr(0, 5) == "cuda:") {
    spec.kind = DeviceSpec::Kind::kCuda;
    if (text.size() > 4 && (!absl::SimpleAtoi(text.substr(5), &spec.index) || spec.index < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad device '", text, "': cuda:N wants N >= 0"));
    }
    return spec;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", text, "' (cpu, cuda or cuda:N)"));
}

std::string DeviceName(const DeviceSpec& device) {
  return device.is_gpu() ? absl::StrCat("cuda:", device.index) : "cpu";
}

absl::Status CheckDeviceAvailable(const DeviceSpec& device) {
  if (!device.is_gpu() || TestingFactory()) return absl::OkStatus();
#if ULTRAMEM_HAVE_CUDA
  return cuda::CheckCudaDevice(device.index);
#else
  return absl::FailedPreconditionError(
      absl::StrCat("device ", DeviceName(device),
                   ": this build has no CUDA support (rebuild where nvcc is "
                   "found, with -DULTRAMEM_CUDA=ON), serve with --device=cpu"));
#endif
}

absl::StatusOr<std::unique_ptr<GpuHotTier>> CreateGpuHotTier(const GpuHotTierOptions& options) {
  DeviceSpec device{DeviceSpec::Kind::kCuda, options.device};
  if (TestingFactory()) return TestingFactory()(options);
  if (absl::Status s = CheckDeviceAvailable(device); !s.ok()) return s;
#if ULTRAMEM_HAVE_CUDA
  return cuda::CreateCudaHotTier(options);
#else
  return absl::FailedPreconditionError("unreachable: no CUDA support");
#endif
}

}  // namespace ultramem::memory
