// Implementation of kernel_timeline.h.
#include "compute_node/cuda/tools/kernel_timeline.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

#if defined(UM_HAVE_CUPTI)
#include <cuda_runtime.h>
#include <cupti.h>
#endif

namespace ultramem::cuda {

std::string KernelShortName(const char* mangled) {
  if (mangled == nullptr) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d != nullptr ? d : mangled;
  std::free(d);
  // Drop the parameter list (the last top-level parenthesis) and the return type.
  int depth = 0;
  for (size_t i = s.size(); i-- > 0;) {
    if (s[i] == ')') ++depth;
    if (s[i] == '(' && --depth == 0) {
      s.resize(i);
      break;
    }
  }
  s = absl::StrReplaceAll(s, {{"ultramem::cuda::", ""}, {"(anonymous namespace)::", ""}});
  if (const size_t sp = s.find(' '); sp != std::string::npos && s.find('<') > sp) s = s.substr(sp + 1);
  return s;
}

namespace {

#if defined(UM_HAVE_CUPTI)
std::mutex g_mu;
std::vector<KernelSpan>* g_spans = nullptr;

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t{16} << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(g_mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    if (g_spans != nullptr) g_spans->push_back({k->start, k->end, k->streamId, KernelShortName(k->name)});
  }
  std::free(buffer);
}

absl::Status Cupti(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return absl::OkStatus();
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  return absl::InternalError(absl::StrFormat("%s: %s", what, msg ? msg : "?"));
}
#endif

}  // namespace

bool KernelTimelineAvailable() {
#if defined(UM_HAVE_CUPTI)
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::vector<KernelSpan>> RecordKernelTimeline(const std::function<absl::Status()>& work) {
#if defined(UM_HAVE_CUPTI)
  std::vector<KernelSpan> spans;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_spans = &spans;
  }
  absl::Status st = Cupti(cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted), "register");
  if (st.ok()) st = Cupti(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable");
  if (st.ok()) {
    st = work();
    if (cudaDeviceSynchronize() != cudaSuccess && st.ok()) st = absl::InternalError("cudaDeviceSynchronize failed");
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityFlushAll(1);
  }
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_spans = nullptr;
  }
  if (!st.ok()) return st;
  std::sort(spans.begin(), spans.end(), [](const KernelSpan& a, const KernelSpan& b) { return a.start_ns < b.start_ns; });
  return spans;
#else
  (void)work;
  return absl::UnimplementedError("this build has no CUPTI (CMake did not find CUDA::cupti)");
#endif
}

std::string FormatKernelTimeline(const std::vector<KernelSpan>& spans) {
  if (spans.empty()) return "no kernels\n";
  const uint64_t t0 = spans.front().start_ns;
  uint64_t t1 = t0;
  std::map<uint32_t, int> stream_index;
  std::string out = absl::StrFormat("%9s %9s %8s %6s  %s\n", "start_us", "end_us", "dur_us", "stream", "kernel");
  for (const KernelSpan& k : spans) {
    const int s = stream_index.emplace(k.stream, static_cast<int>(stream_index.size())).first->second;
    t1 = std::max(t1, k.end_ns);
    absl::StrAppendFormat(&out, "%9.2f %9.2f %8.2f %6d  %s\n", (k.start_ns - t0) / 1e3, (k.end_ns - t0) / 1e3,
                          (k.end_ns - k.start_ns) / 1e3, s, k.name.substr(0, 70));
  }
  absl::StrAppendFormat(&out, "%zu kernels on %zu streams, %.2f us from the first start to the last end\n",
                        spans.size(), stream_index.size(), (t1 - t0) / 1e3);
  return out;
}

}  // namespace ultramem::cuda
