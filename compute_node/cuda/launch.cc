// Implementation of launch.cuh's host helpers.
#include "compute_node/cuda/launch.cuh"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace ultramem::cuda {

bool PdlEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("UM_CUDA_PDL");
    if (v != nullptr && std::strcmp(v, "0") == 0) return false;
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return enabled;
}

namespace {
thread_local bool pdl_on_this_thread = true;
}  // namespace

ScopedPdl::ScopedPdl(bool enable) : saved_(pdl_on_this_thread) { pdl_on_this_thread = enable; }
ScopedPdl::~ScopedPdl() { pdl_on_this_thread = saved_; }

bool PdlActive() { return pdl_on_this_thread && PdlEnabled(); }

int EnvKnob::Get() const {
  const int o = override_.load(std::memory_order_relaxed);
  if (o >= 0) return o;
  std::call_once(read_, [this] { from_env_ = EnvInt(name_, fallback_); });
  return from_env_;
}

void AllowDynamicSmem(const void* kernel, size_t bytes) {
  constexpr size_t kDefaultLimit = 48 * 1024;
  if (bytes <= kDefaultLimit) return;
  static std::mutex mu;
  static auto* allowed = new std::unordered_map<const void*, size_t>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  size_t& have = (*allowed)[kernel];
  if (bytes <= have) return;
  // On failure the launch that follows fails too, and reports it.
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) ==
      cudaSuccess) {
    have = bytes;
  }
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v == nullptr ? fallback : std::atoi(v);
}

int SmCount() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
    return n > 0 ? n : 1;
  }();
  return count;
}

}  // namespace ultramem::cuda
