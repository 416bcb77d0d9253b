// Implementation of cuda_hot_tier.h: the slot table in one device allocation, and a small pool of
// per-stream contexts (stream, pinned staging, device scratch) so that concurrent lookups overlap.
// A lookup packs its request into one pinned blob, copies it H2D in one asynchronous copy, runs
// the pooling kernel (and the promotion copy), copies Y D2H into pinned memory and waits.
#include "memory_server/cuda/cuda_hot_tier.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "memory_server/cuda/cuda_check.h"
#include "common/cuda/synthetic_fill.cuh"
#include "memory_server/cuda/pool_kernel.cuh"

namespace ultramem::memory::cuda {
namespace {

// A device or pinned buffer that grows (never shrinks) to the largest request.
template <bool kPinned>
struct Buffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  ~Buffer() { Free(); }
  void Free() {
    if (p != nullptr) kPinned ? cudaFreeHost(p) : cudaFree(p);
    p = nullptr;
    n = 0;
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= n) return absl::OkStatus();
    Free();
    bytes = std::max<size_t>(bytes, 2 * n);  // amortize growth
    if constexpr (kPinned) {
      MS_CUDA_CHECK(cudaMallocHost(&p, bytes));
    } else {
      MS_CUDA_CHECK(cudaMalloc(&p, bytes));
    }
    n = bytes;
    return absl::OkStatus();
  }
};

struct Context {
  cudaStream_t stream = nullptr;
  Buffer<true> host_in, host_out;
  Buffer<false> dev_in, dev_out;
  ~Context() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

size_t Align16(size_t n) { return (n + 15) & ~size_t{15}; }

class CudaHotTier final : public GpuHotTier {
 public:
  explicit CudaHotTier(const GpuHotTierOptions& o) : options_(o) {}
  ~CudaHotTier() override {
    cudaSetDevice(options_.device);
    contexts_.clear();
    if (table_ != nullptr) cudaFree(table_);
  }

  absl::Status Init() {
    const GpuHotTierOptions& o = options_;
    if (o.width <= 0 || o.expand <= 0 || o.cores <= 0 || o.value_dim % o.cores != 0 ||
        o.num_slots < 0 || o.num_streams <= 0) {
      return absl::InvalidArgumentError("GPU hot tier: inconsistent shape or stream count");
    }
    MS_CUDA_CHECK(cudaSetDevice(o.device));
    cudaDeviceProp prop;
    MS_CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
    name_ = absl::StrCat(prop.name, " (cuda:", o.device, ")");
    if (absl::Status s = PreparePoolKernels(PoolSharedBytes(o.expand, o.width)); !s.ok()) return s;
    const size_t table_bytes = static_cast<size_t>(o.num_slots) * o.width * 2;
    if (table_bytes > 0) {
      const cudaError_t e = cudaMalloc(&table_, table_bytes);
      if (e != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free allocation error
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        return absl::ResourceExhaustedError(absl::StrCat(
            "GPU hot tier: cannot allocate ", table_bytes, " bytes of row slots on ", name_, " (",
            free_bytes, " of ", total_bytes, " bytes free): lower --hot_capacity_bytes"));
      }
    }
    for (int i = 0; i < o.num_streams; ++i) {
      auto c = std::make_unique<Context>();
      MS_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
      free_.push_back(c.get());
      contexts_.push_back(std::move(c));
    }
    return absl::OkStatus();
  }

  int64_t num_slots() const override { return options_.num_slots; }
  std::string device_name() const override { return name_; }

  absl::Status Upload(int64_t first_slot, int64_t n, const uint16_t* rows) override {
    if (first_slot < 0 || n < 0 || first_slot + n > options_.num_slots) {
      return absl::InvalidArgumentError("GPU hot tier: upload outside the slots");
    }
    MS_CUDA_CHECK(cudaSetDevice(options_.device));
    MS_CUDA_CHECK(cudaMemcpy(table_ + first_slot * options_.width, rows,
                             static_cast<size_t>(n) * options_.width * 2, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }

  absl::Status FillSynthetic(const SyntheticValues& spec, int layer, int64_t row_begin, int64_t n,
                             int64_t first_slot) override {
    if (first_slot < 0 || n < 0 || first_slot + n > options_.num_slots) {
      return absl::InvalidArgumentError("GPU hot tier: fill outside the slots");
    }
    MS_CUDA_CHECK(cudaSetDevice(options_.device));
    if (absl::Status s =
            LaunchFillSyntheticBf16(spec, layer, row_begin, n, options_.col_begin, options_.width,
                                    Table() + first_slot * options_.width, nullptr);
        !s.ok()) {
      return s;
    }
    MS_CUDA_CHECK(cudaDeviceSynchronize());
    return absl::OkStatus();
  }

  absl::Status Pool(const GpuPoolCall& call, double* device_seconds) override {
    const GpuHotTierOptions& o = options_;
    const int T = call.num_tokens, S = call.num_selections, X = call.num_extra;
    if (T < 0 || S < 0 || X < 0 || (T > 0 && call.offsets[T] != S)) {
      return absl::InvalidArgumentError("GPU hot tier: selection counts disagree");
    }
    const int64_t limit = o.num_slots + X;
    for (int i = 0; i < S; ++i) {
      if (call.slots[i] >= limit ||
          (call.slots[i] >= 0 && (call.groups[i] < 0 || call.groups[i] >= o.expand))) {
        return absl::InvalidArgumentError(absl::StrCat("GPU hot tier: selection ", i, " has slot ",
                                                       call.slots[i], ", group ", call.groups[i]));
      }
    }
    // The request blob: offsets | slots | groups | scores | promote_to | extra rows.
    const size_t row_bytes = static_cast<size_t>(o.width) * 2;
    const size_t off_offsets = 0;
    const size_t off_slots = Align16(off_offsets + (T + 1) * sizeof(int32_t));
    const size_t off_groups = Align16(off_slots + S * sizeof(int64_t));
    const size_t off_scores = Align16(off_groups + S * sizeof(int32_t));
    const size_t off_promote =
        Align16(off_scores + static_cast<size_t>(S) * o.cores * sizeof(float));
    const size_t off_extra = Align16(off_promote + X * sizeof(int64_t));
    const size_t in_bytes = off_extra + X * row_bytes;
    const size_t out_bytes = static_cast<size_t>(T) * o.expand * o.width * sizeof(float);

    MS_CUDA_CHECK(cudaSetDevice(o.device));
    ContextLease lease(this);
    Context& c = *lease.context;
    for (absl::Status s : {c.host_in.Reserve(in_bytes), c.dev_in.Reserve(in_bytes),
                           c.host_out.Reserve(out_bytes), c.dev_out.Reserve(out_bytes)}) {
      if (!s.ok()) return s;
    }
    uint8_t* h = c.host_in.p;
    std::memcpy(h + off_offsets, call.offsets, (T + 1) * sizeof(int32_t));
    std::memcpy(h + off_slots, call.slots, S * sizeof(int64_t));
    std::memcpy(h + off_groups, call.groups, S * sizeof(int32_t));
    std::memcpy(h + off_scores, call.scores, static_cast<size_t>(S) * o.cores * sizeof(float));
    bool promote = false;
    if (X > 0) {
      for (int i = 0; i < X && call.promote_to != nullptr; ++i) promote |= call.promote_to[i] >= 0;
      if (promote) std::memcpy(h + off_promote, call.promote_to, X * sizeof(int64_t));
      std::memcpy(h + off_extra, call.extra_rows, X * row_bytes);
    }
    const auto start = std::chrono::steady_clock::now();
    uint8_t* d = c.dev_in.p;
    MS_CUDA_CHECK(cudaMemcpyAsync(d, h, in_bytes, cudaMemcpyHostToDevice, c.stream));
    PoolLaunch p;
    p.table = Table();
    p.num_slots = o.num_slots;
    p.extra = reinterpret_cast<const __nv_bfloat16*>(d + off_extra);
    p.slots = reinterpret_cast<const int64_t*>(d + off_slots);
    p.groups = reinterpret_cast<const int32_t*>(d + off_groups);
    p.scores = reinterpret_cast<const float*>(d + off_scores);
    p.offsets = reinterpret_cast<const int32_t*>(d + off_offsets);
    p.num_tokens = T;
    p.expand = o.expand;
    p.width = o.width;
    p.col_begin = o.col_begin;
    p.chunk = o.value_dim / o.cores;
    p.cores = o.cores;
    p.out = reinterpret_cast<float*>(c.dev_out.p);
    if (absl::Status s = LaunchPool(p, c.stream); !s.ok()) return Fail(c, s);
    if (promote) {
      // After the kernel on the same stream: no lookup reads these slots before Publish.
      if (absl::Status s =
              LaunchCopyRows(p.extra, reinterpret_cast<const int64_t*>(d + off_promote), X, o.width,
                             Table(), c.stream);
          !s.ok()) {
        return Fail(c, s);
      }
    }
    if (out_bytes > 0) {
      MS_CUDA_CHECK(
          cudaMemcpyAsync(c.host_out.p, c.dev_out.p, out_bytes, cudaMemcpyDeviceToHost, c.stream));
    }
    MS_CUDA_CHECK(cudaStreamSynchronize(c.stream));
    if (device_seconds != nullptr) {
      *device_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    std::memcpy(call.out, c.host_out.p, out_bytes);
    return absl::OkStatus();
  }

 private:
  // Takes a free context for the scope, waiting for one when all are busy.
  struct ContextLease {
    explicit ContextLease(CudaHotTier* t) : tier(t) {
      std::unique_lock<std::mutex> lock(tier->mu_);
      tier->cv_.wait(lock, [&] { return !tier->free_.empty(); });
      context = tier->free_.back();
      tier->free_.pop_back();
    }
    ~ContextLease() {
      {
        std::lock_guard<std::mutex> lock(tier->mu_);
        tier->free_.push_back(context);
      }
      tier->cv_.notify_one();
    }
    CudaHotTier* tier;
    Context* context;
  };

  // An error mid-lookup: wait for what was enqueued so the buffers can be reused.
  absl::Status Fail(Context& c, absl::Status s) {
    cudaStreamSynchronize(c.stream);
    return s;
  }

  __nv_bfloat16* Table() { return reinterpret_cast<__nv_bfloat16*>(table_); }

  const GpuHotTierOptions options_;
  std::string name_;
  uint16_t* table_ = nullptr;
  std::vector<std::unique_ptr<Context>> contexts_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Context*> free_;  // guarded by mu_
};

}  // namespace

absl::Status CheckCudaDevice(int index) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("device cuda:", index, ": no usable CUDA device (", cudaGetErrorName(e), ": ",
                     cudaGetErrorString(e), "); serve with --device=cpu"));
  }
  if (index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device cuda:", index, ": this machine has ", count, " CUDA device(s)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GpuHotTier>> CreateCudaHotTier(const GpuHotTierOptions& options) {
  if (absl::Status s = CheckCudaDevice(options.device); !s.ok()) return s;
  auto tier = std::make_unique<CudaHotTier>(options);
  if (absl::Status s = tier->Init(); !s.ok()) return s;
  return std::unique_ptr<GpuHotTier>(std::move(tier));
}

}  // namespace ultramem::memory::cuda
