// A per-kernel timeline of GPU work, from CUPTI's kernel activity records (the GPU machine has no
// nsys): which kernel ran when, on which stream, inside a replayed CUDA graph too.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ultramem::cuda {

struct KernelSpan {
  uint64_t start_ns = 0, end_ns = 0;  // device timestamps
  uint32_t stream = 0;
  std::string name;  // demangled, without namespaces and parameter lists
};

// True when this build has CUPTI (CMake found CUDA::cupti).
bool KernelTimelineAvailable();

// Runs `work` with CUPTI's concurrent-kernel records on, waits for the device, and returns every
// kernel `work` launched, ordered by start. UNIMPLEMENTED without CUPTI.
absl::StatusOr<std::vector<KernelSpan>> RecordKernelTimeline(const std::function<absl::Status()>& work);

// "void ultramem::cuda::(anonymous namespace)::Foo<64, 4>(Args)" from its mangled name -> "Foo<64, 4>";
// names that do not demangle (cuBLAS's kernels) as they are.
std::string KernelShortName(const char* mangled);

// The spans as a table: start and end in µs after the first kernel's start, duration, a stream
// index (0 = the first stream seen), name.
std::string FormatKernelTimeline(const std::vector<KernelSpan>& spans);

}  // namespace ultramem::cuda
