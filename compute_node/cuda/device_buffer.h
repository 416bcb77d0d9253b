// Owning device and pinned-host allocations for the CUDA backend. Allocation failures come back as
// absl::Status through CUDA_CHECK; freeing never fails loudly (destructors ignore errors).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "compute_node/cuda/cuda_check.h"

namespace ultramem::cuda {

// Where a CudaBuffer's memory comes from.
struct DeviceMemory {
  static cudaError_t Allocate(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
  static void Free(void* p) { cudaFree(p); }
};
struct PinnedMemory {  // page-locked host memory, for asynchronous copies
  static cudaError_t Allocate(void** p, size_t bytes) { return cudaMallocHost(p, bytes); }
  static void Free(void* p) { cudaFreeHost(p); }
};

// `count` elements of T (uninitialized) from `Memory`. Move-only.
template <typename T, typename Memory>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  ~CudaBuffer() { Reset(); }
  CudaBuffer(CudaBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  CudaBuffer& operator=(CudaBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  // Reallocates when `count` exceeds the capacity (contents are lost).
  absl::Status Reserve(size_t count) {
    if (count <= count_) return absl::OkStatus();
    Reset();
    void* p = nullptr;
    CUDA_CHECK(Memory::Allocate(&p, count * sizeof(T)));
    ptr_ = static_cast<T*>(p);
    count_ = count;
    return absl::OkStatus();
  }
  // Device memory only: allocates exactly `count` elements and copies them from host memory.
  absl::Status Upload(const T* host, size_t count) {
    static_assert(std::is_same_v<Memory, DeviceMemory>, "Upload is for device buffers");
    if (absl::Status s = Reserve(count); !s.ok()) return s;
    if (count > 0) CUDA_CHECK(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) Memory::Free(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

template <typename T>
using DeviceBuffer = CudaBuffer<T, DeviceMemory>;
template <typename T>
using PinnedBuffer = CudaBuffer<T, PinnedMemory>;

}  // namespace ultramem::cuda
