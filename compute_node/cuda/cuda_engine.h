// The CUDA engine: MODEL.md §2–3 on one GPU (bf16 weights, fp32 accumulation and residual), with
// the memory layers' steps 1–9 on the GPU, step 10 either in device memory (value tables loaded
// from EngineOptions.value_source) or through the host RowPooler, and each decode step replayed
// from a CUDA graph. No CUDA type appears here; the registry is the only caller of the factory.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "compute_node/engine.h"

namespace ultramem {

// FAILED_PRECONDITION when no CUDA device is usable; INTERNAL for other CUDA errors.
absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(std::shared_ptr<const ModelWeights> weights,
                                                         RowPooler* pooler,
                                                         const EngineOptions& options);

// For benchmarks: replays the device work of the engine's last Forward `iterations` times
// (from its CUDA graph when `graph` and the step had one, else re-enqueued eagerly) and returns
// the mean device time per step in microseconds, measured with CUDA events. Idempotent: the step
// rewrites the same KV positions with the same values; no sequence changes length. `engine` must
// come from CreateCudaEngine; the last Forward must have pooled in device memory.
absl::StatusOr<double> CudaReplayLastStepMicros(Engine* engine, int iterations, bool graph);

// Device-to-device copy bandwidth in bytes per second (read + write counted), measured over a
// `bytes`-byte buffer; the ceiling for the bytes floor of benchmarks.
absl::StatusOr<double> CudaCopyBandwidth(size_t bytes);

}  // namespace ultramem
