// Kernel launches with programmatic dependent launch (PDL, sm_90): a kernel launched through
// LaunchKernel may be scheduled while the previous kernel of its stream is still running, so its
// launch latency and any prologue that reads no earlier output (a GEMV's first weight loads)
// overlap that kernel's tail. Contract for every kernel launched this way: each block calls
// GridDependencyWait() before it reads anything an earlier kernel wrote and before it can exit
// (otherwise the grid could complete before its predecessor and break the chain for the next
// kernel). Without PDL (UM_CUDA_PDL=0 in the environment, or a pre-sm_90 device) the wait is a
// no-op and launches are ordinary.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

namespace ultramem::cuda {

// True unless the environment sets UM_CUDA_PDL=0 (read once).
bool PdlEnabled();

// While alive, kernels that this thread launches through LaunchKernel use PDL only if `enable`
// (and PdlEnabled()). Scopes nest.
class ScopedPdl {
 public:
  explicit ScopedPdl(bool enable);
  ~ScopedPdl();
  ScopedPdl(const ScopedPdl&) = delete;
  ScopedPdl& operator=(const ScopedPdl&) = delete;

 private:
  bool saved_;
};

// PdlEnabled() and not switched off on this thread by a ScopedPdl.
bool PdlActive();

// The number of multiprocessors of the current device (read once).
int SmCount();

// The integer in environment variable `name` (atoi), or `fallback` when it is not set. The
// engine's measuring knobs (UM_CUDA_...) read it once each.
int EnvInt(const char* name, int fallback);

// A measuring knob a test can set: EnvInt(name, fallback), read once, unless Override(v) with
// v >= 0 holds (Override(-1) hands it back to the environment).
class EnvKnob {
 public:
  EnvKnob(const char* name, int fallback) : name_(name), fallback_(fallback) {}
  int Get() const;
  void Override(int value) { override_.store(value, std::memory_order_relaxed); }

 private:
  const char* name_;
  int fallback_;
  std::atomic<int> override_{-1};
  mutable std::once_flag read_;
  mutable int from_env_ = 0;
};

// Host side of a trace ring: device records `ring` (block 0 of each launch writes slot
// atomicAdd(&next, 1) % N) are copied back, oldest first, and `next` is reset. Call it from the
// .cu file that defines both symbols.
template <class T, unsigned int N>
std::vector<T> TakeTraceRing(const T (&ring)[N], const unsigned int& next_symbol) {
  unsigned int next = 0;
  std::vector<T> out;
  if (cudaMemcpyFromSymbol(&next, next_symbol, sizeof(next)) != cudaSuccess) return out;
  const unsigned int n = std::min(next, N);
  out.resize(n);
  if (n > 0 && cudaMemcpyFromSymbol(out.data(), ring, n * sizeof(T)) != cudaSuccess) out.clear();
  if (next > N && !out.empty()) std::rotate(out.begin(), out.begin() + next % N, out.end());  // wrapped
  const unsigned int zero = 0;
  cudaMemcpyToSymbol(next_symbol, &zero, sizeof(zero));
  return out;
}

__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream be scheduled now (it still waits for this grid to complete
// before reading its outputs).
__device__ __forceinline__ void AllowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks L2 for `bytes` (a multiple of 16, 16-byte aligned) at `p`: a hint that holds no registers
// and needs no completion, for data that no earlier kernel writes (weights, old cache rows),
// issued before GridDependencyWait().
__device__ __forceinline__ void PrefetchL2(const void* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Lets `kernel` take `bytes` of dynamic shared memory where that is above the default 48 KB:
// raises its limit the first time a launch needs more (thread-safe; the largest size set so far
// is remembered per kernel). LaunchKernel calls it; kernels launched with <<<>>> call it first.
void AllowDynamicSmem(const void* kernel, size_t bytes);

// kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute when enabled, in
// thread-block clusters of `cluster_x` blocks along x when that is above 0 (grid.x a multiple of
// it), past 48 KB of dynamic shared memory where `smem` asks for it. Errors surface through
// cudaGetLastError() as for <<<>>>.
template <typename... Params, typename... Args>
void LaunchKernelIn(int cluster_x, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                    cudaStream_t stream, Args&&... args) {
  AllowDynamicSmem(reinterpret_cast<const void*>(kernel), smem);
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (cluster_x > 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (PdlActive() && stream != nullptr) {  // not on the legacy stream
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = n;
  cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// The same without clusters.
template <typename... Params, typename... Args>
void LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                  Args&&... args) {
  LaunchKernelIn(0, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace ultramem::cuda
