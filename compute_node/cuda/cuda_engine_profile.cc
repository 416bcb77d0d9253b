// The CUDA engine's per-op profile (UM_CUDA_PROFILE=1): events after every op of one eager step
// on each stream, summed by op and printed by ReplayLastStep.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "compute_node/cuda/cuda_engine_internal.h"

namespace ultramem {
namespace cuda {

// UM_CUDA_ABLATE's names, read once.
static const std::set<std::string>& AblatedOps() {
  static const std::set<std::string> ablated = [] {
    const char* v = std::getenv("UM_CUDA_ABLATE");
    const std::set<std::string> ops = absl::StrSplit(v != nullptr ? v : "", ',', absl::SkipEmpty());
    if (!ops.empty()) {
      std::fprintf(stderr, "UM_CUDA_ABLATE: leaving out %s (timing only: outputs are wrong)\n",
                   absl::StrJoin(ops, " ").c_str());
    }
    return ops;
  }();
  return ablated;
}

bool CudaEngine::Ablated(const char* op) {
  const std::set<std::string>& ops = AblatedOps();
  return !ops.empty() && ops.count(op) != 0;
}

// Each step asks this per memory layer: no per-layer name is built unless something is ablated.
bool CudaEngine::AblatedForLayer(const char* op, int j) {
  if (AblatedOps().empty()) return false;
  return Ablated(op) || Ablated(absl::StrCat(op, ".", j).c_str());
}

void CudaEngine::Mark(const char* op, cudaStream_t stream) {
  if (!profiling_) return;
  auto& marks = stream == main_ ? marks_main_ : marks_mem_;
  const size_t used = marks_main_.size() + marks_mem_.size();
  if (used == profile_events_.size()) {
    cudaEvent_t e = nullptr;
    if (cudaEventCreate(&e) != cudaSuccess) return;
    profile_events_.push_back(e);
  }
  cudaEvent_t e = profile_events_[used];
  if (cudaEventRecord(e, stream) != cudaSuccess) return;
  marks.emplace_back(op, e);
}

// Device time between consecutive events of each stream, summed by the op that ended there
// ("start" and "fork" only open a stretch). Printed to stderr, largest first.
void CudaEngine::PrintOpProfile() {
  std::map<std::string, std::pair<double, int>> by_op;
  double total_main = 0;
  for (auto* marks : {&marks_main_, &marks_mem_}) {
    for (size_t i = 1; i < marks->size(); ++i) {
      const std::string op = (*marks)[i].first;
      if (op == "fork") continue;
      float ms = 0;
      if (cudaEventElapsedTime(&ms, (*marks)[i - 1].second, (*marks)[i].second) != cudaSuccess) continue;
      auto& [us, n] = by_op[op];
      us += 1000.0 * ms;
      ++n;
      if (marks == &marks_main_) total_main += 1000.0 * ms;
    }
  }
  std::vector<std::pair<double, std::string>> rows;
  for (const auto& [op, v] : by_op) rows.emplace_back(v.first, op);
  std::sort(rows.rbegin(), rows.rend());
  std::fprintf(stderr, "op profile (one eager step, %d tokens, events between ops): main stream %.1f us\n",
               last_tokens_, total_main);
  for (const auto& [us, op] : rows) {
    std::fprintf(stderr, "  %-18s %9.1f us %4d x %7.2f us\n", op.c_str(), us, by_op[op].second, us / by_op[op].second);
  }
}

}  // namespace cuda
}  // namespace ultramem
