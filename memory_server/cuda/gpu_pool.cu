// Implementation of gpu_pool.h over pool_kernel.cuh's kernel (the GPU hot tier's kernel).
#include "memory_server/cuda/gpu_pool.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "memory_server/cuda/cuda_check.h"
#include "memory_server/cuda/pool_kernel.cuh"

namespace ultramem {
namespace {

using memory::cuda::LaunchPool;
using memory::cuda::PoolLaunch;

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  ~Dev() { if (p) cudaFree(p); }
  absl::Status Reserve(size_t count) {
    if (count <= n) return absl::OkStatus();
    if (p) cudaFree(p);
    p = nullptr;
    n = 0;
    MS_CUDA_CHECK(cudaMalloc(&p, count * sizeof(T)));
    n = count;
    return absl::OkStatus();
  }
};

template <typename T>
struct Pinned {
  T* p = nullptr;
  size_t n = 0;
  ~Pinned() { if (p) cudaFreeHost(p); }
  absl::Status Reserve(size_t count) {
    if (count <= n) return absl::OkStatus();
    if (p) cudaFreeHost(p);
    p = nullptr;
    n = 0;
    MS_CUDA_CHECK(cudaMallocHost(&p, count * sizeof(T)));
    n = count;
    return absl::OkStatus();
  }
};

class GpuRowPoolImpl : public GpuRowPool {
 public:
  ~GpuRowPoolImpl() override {
    if (stream_) cudaStreamDestroy(stream_);
    if (start_) cudaEventDestroy(start_);
    if (stop_) cudaEventDestroy(stop_);
  }

  absl::Status Init(const uint16_t* rows, int64_t num_slots, int width) {
    num_slots_ = num_slots;
    width_ = width;
    MS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MS_CUDA_CHECK(cudaEventCreate(&start_));
    MS_CUDA_CHECK(cudaEventCreate(&stop_));
    if (absl::Status s = table_.Reserve(static_cast<size_t>(num_slots) * width); !s.ok()) return s;
    MS_CUDA_CHECK(cudaMemcpy(table_.p, rows, static_cast<size_t>(num_slots) * width * 2,
                             cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }

  absl::Status Pool(const PoolShape& s, const int64_t* slots, const int32_t* groups,
                    const float* scores, float* out) override {
    if (s.col_end - s.col_begin != width_ || s.cores <= 0 || s.value_dim % s.cores != 0 ||
        s.expand <= 0 || s.num_tokens < 0 || s.selections < 0) {
      return absl::InvalidArgumentError("GpuRowPool: shape does not match the table");
    }
    const size_t sel = static_cast<size_t>(s.num_tokens) * s.selections;
    for (size_t i = 0; i < sel; ++i) {
      if (slots[i] >= num_slots_ || (slots[i] >= 0 && (groups[i] < 0 || groups[i] >= s.expand))) {
        return absl::InvalidArgumentError(absl::StrCat("GpuRowPool: selection ", i, " has slot ",
                                                       slots[i], " group ", groups[i]));
      }
    }
    const size_t out_count = static_cast<size_t>(s.num_tokens) * s.expand * width_;
    for (absl::Status st : {h_slots_.Reserve(sel), d_slots_.Reserve(sel)}) if (!st.ok()) return st;
    for (absl::Status st : {h_groups_.Reserve(sel), d_groups_.Reserve(sel)}) if (!st.ok()) return st;
    for (absl::Status st : {h_scores_.Reserve(sel * s.cores), d_scores_.Reserve(sel * s.cores)}) if (!st.ok()) return st;
    for (absl::Status st : {h_out_.Reserve(out_count), d_out_.Reserve(out_count)}) if (!st.ok()) return st;
    std::copy(slots, slots + sel, h_slots_.p);
    std::copy(groups, groups + sel, h_groups_.p);
    std::copy(scores, scores + sel * s.cores, h_scores_.p);
    MS_CUDA_CHECK(cudaMemcpyAsync(d_slots_.p, h_slots_.p, sel * 8, cudaMemcpyHostToDevice, stream_));
    MS_CUDA_CHECK(cudaMemcpyAsync(d_groups_.p, h_groups_.p, sel * 4, cudaMemcpyHostToDevice, stream_));
    MS_CUDA_CHECK(cudaMemcpyAsync(d_scores_.p, h_scores_.p, sel * s.cores * 4, cudaMemcpyHostToDevice, stream_));
    last_ = s;
    if (absl::Status st = Launch(); !st.ok()) return st;
    MS_CUDA_CHECK(cudaMemcpyAsync(h_out_.p, d_out_.p, out_count * 4, cudaMemcpyDeviceToHost, stream_));
    MS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::copy(h_out_.p, h_out_.p + out_count, out);
    return absl::OkStatus();
  }

  absl::StatusOr<double> TimeLastKernel(int iterations) override {
    if (last_.num_tokens == 0) return absl::FailedPreconditionError("no request yet");
    for (int i = 0; i < 3; ++i) if (absl::Status st = Launch(); !st.ok()) return st;
    MS_CUDA_CHECK(cudaEventRecord(start_, stream_));
    for (int i = 0; i < iterations; ++i) if (absl::Status st = Launch(); !st.ok()) return st;
    MS_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    MS_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    MS_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return 1000.0 * ms / iterations;
  }

 private:
  absl::Status Launch() {
    const PoolShape& s = last_;
    if (s.num_tokens == 0) return absl::OkStatus();
    if (absl::Status st = memory::cuda::PreparePoolKernels(
            memory::cuda::PoolSharedBytes(s.expand, width_));
        !st.ok()) {
      return st;
    }
    PoolLaunch p;
    p.table = reinterpret_cast<const __nv_bfloat16*>(table_.p);
    p.num_slots = num_slots_;
    p.slots = d_slots_.p;
    p.groups = d_groups_.p;
    p.scores = d_scores_.p;
    p.num_tokens = s.num_tokens;
    p.selections = s.selections;
    p.expand = s.expand;
    p.width = width_;
    p.col_begin = s.col_begin;
    p.chunk = s.value_dim / s.cores;
    p.cores = s.cores;
    p.out = d_out_.p;
    return LaunchPool(p, stream_);
  }

  int64_t num_slots_ = 0;
  int width_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  Dev<uint16_t> table_;
  Dev<int64_t> d_slots_;
  Dev<int32_t> d_groups_;
  Dev<float> d_scores_, d_out_;
  Pinned<int64_t> h_slots_;
  Pinned<int32_t> h_groups_;
  Pinned<float> h_scores_, h_out_;
  PoolShape last_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GpuRowPool>> GpuRowPool::Create(const uint16_t* rows,
                                                               int64_t num_slots, int width) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError("GpuRowPool: no CUDA device");
  }
  auto pool = std::make_unique<GpuRowPoolImpl>();
  if (absl::Status s = pool->Init(rows, num_slots, width); !s.ok()) return s;
  return std::unique_ptr<GpuRowPool>(std::move(pool));
}

absl::StatusOr<double> GpuCopyBandwidth(size_t bytes) {
  Dev<uint8_t> a, b;
  if (absl::Status s = a.Reserve(bytes); !s.ok()) return s;
  if (absl::Status s = b.Reserve(bytes); !s.ok()) return s;
  MS_CUDA_CHECK(cudaMemset(a.p, 1, bytes));
  MS_CUDA_CHECK(cudaMemset(b.p, 2, bytes));
  cudaEvent_t start, stop;
  MS_CUDA_CHECK(cudaEventCreate(&start));
  MS_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) MS_CUDA_CHECK(cudaMemcpy(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));
  constexpr int kIters = 20;
  MS_CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < kIters; ++i) {
    MS_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a.p : b.p, i % 2 ? b.p : a.p, bytes, cudaMemcpyDeviceToDevice));
  }
  MS_CUDA_CHECK(cudaEventRecord(stop));
  MS_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  MS_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * static_cast<double>(bytes) * kIters / (ms * 1e-3);
}

}  // namespace ultramem
