// The GPU hot tier's device side, as the rest of the server sees it: value rows in device memory
// as bf16 slots, and one lookup's pooling (MODEL.md §3 step 10) on the device, staged through
// pinned host buffers. Which row is in which slot is the caller's business (memory_server/
// slot_map.h). No CUDA type appears here: the CUDA implementation lives in memory_server/cuda/,
// and device_registry.cc is the one place that knows whether this build has it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/synthetic_values.h"

namespace ultramem::memory {

// Where a store's hot rows live: "cpu" (host RAM) or "cuda" / "cuda:N" (device N, default 0).
struct DeviceSpec {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int index = 0;
  bool is_gpu() const { return kind != Kind::kCpu; }
};
// InvalidArgument for anything but the forms above.
absl::StatusOr<DeviceSpec> ParseDevice(absl::string_view text);
std::string DeviceName(const DeviceSpec& device);  // "cpu", "cuda:0"
// OK for cpu, and for a GPU device this build supports and this machine has; FailedPrecondition
// saying which is missing otherwise (a build without CUDA, no device, an index past the count).
absl::Status CheckDeviceAvailable(const DeviceSpec& device);

struct GpuHotTierOptions {
  int device = 0;         // CUDA device index
  int64_t num_slots = 0;  // rows resident in device memory (may be 0: every row is an extra)
  int width = 0;          // bf16 values per row: the shard's columns
  // The pooling shape's constants (common/pooling.h PoolShape).
  int expand = 1;
  int value_dim = 0;
  int cores = 1;
  int col_begin = 0;
  // Lookups on the device at once. Each has its own stream, pinned staging buffers and device
  // scratch (which grow to the largest lookup seen); more callers wait for one to be free. More
  // overlap copies and kernels of concurrent lookups at the cost of pinned memory.
  int num_streams = 4;
};

// One lookup's pooling. Host pointers; nothing needs to outlive the call.
struct GpuPoolCall {
  int num_tokens = 0;
  int num_selections = 0;
  const int32_t* offsets = nullptr;  // [T + 1]: token t owns selections [offsets[t], offsets[t+1])
  // [S]: a slot in [0, num_slots), or num_slots + i for extra row i, or -1 (contributes nothing).
  const int64_t* slots = nullptr;
  const int32_t* groups = nullptr;       // [S], in [0, E)
  const float* scores = nullptr;         // [S, h]
  const uint16_t* extra_rows = nullptr;  // [num_extra, width] bf16: rows not resident (misses)
  int num_extra = 0;
  // [num_extra] or null: after pooling, extra row i is copied into slot promote_to[i] (-1: not).
  // The slots must be reserved by the caller (no concurrent reader or writer).
  const int64_t* promote_to = nullptr;
  float* out = nullptr;  // [T, E, width], overwritten
};

class GpuHotTier {
 public:
  virtual ~GpuHotTier() = default;

  virtual int64_t num_slots() const = 0;
  // "NVIDIA H200 (cuda:0)".
  virtual std::string device_name() const = 0;

  // Before serving (not concurrently with Pool): slots [first_slot, first_slot + n) = `rows`
  // (n × width bf16, host memory).
  virtual absl::Status Upload(int64_t first_slot, int64_t n, const uint16_t* rows) = 0;
  // Before serving: slots [first_slot, first_slot + n) = rows [row_begin, row_begin + n) of
  // memory layer `layer`'s synthetic values, columns [col_begin, col_begin + width), computed on
  // the device in place (no host copy).
  virtual absl::Status FillSynthetic(const SyntheticValues& spec, int layer, int64_t row_begin,
                                     int64_t n, int64_t first_slot) = 0;
  // Runs one lookup and blocks until call.out is written and the promoted rows are in their slots.
  // Thread safe: up to num_streams calls run at once. INVALID_ARGUMENT for a call that does not
  // fit the tier (a slot out of range); INTERNAL on CUDA errors. `device_seconds`, when not null,
  // receives the time from the first copy to the last (staging excluded).
  virtual absl::Status Pool(const GpuPoolCall& call, double* device_seconds) = 0;
};

// The registry. FailedPrecondition without CUDA support or device (as CheckDeviceAvailable);
// ResourceExhausted when the slots do not fit in device memory; InvalidArgument for a shape the
// kernel cannot run (E × width fp32 accumulators must fit in a block's shared memory).
absl::StatusOr<std::unique_ptr<GpuHotTier>> CreateGpuHotTier(const GpuHotTierOptions& options);

// Tests only: CheckDeviceAvailable (for GPU devices) and CreateGpuHotTier use `factory` instead
// of this build's devices, so that the host side of the GPU tier runs in CPU-only CI against a
// host emulation; an empty function restores the registry. Set it before opening stores.
using GpuHotTierFactory =
    std::function<absl::StatusOr<std::unique_ptr<GpuHotTier>>(const GpuHotTierOptions&)>;
void SetGpuHotTierFactoryForTesting(GpuHotTierFactory factory);

}  // namespace ultramem::memory
