// The one place CUDA and cuBLAS errors become absl::Status (INTERNAL, naming the call, file and
// line). Every CUDA runtime / cuBLAS call in compute_node/cuda goes through CUDA_CHECK or
// CUBLAS_CHECK, which return the status from the enclosing function; kernel launches are followed
// by CUDA_CHECK(cudaGetLastError()).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"

namespace ultramem::cuda {

absl::Status CudaError(cudaError_t error, const char* call, const char* file, int line);
absl::Status CublasError(cublasStatus_t error, const char* call, const char* file, int line);

}  // namespace ultramem::cuda

#define CUDA_CHECK(call)                                                           \
  do {                                                                             \
    const cudaError_t um_cuda_error_ = (call);                                     \
    if (um_cuda_error_ != cudaSuccess) {                                           \
      return ::ultramem::cuda::CudaError(um_cuda_error_, #call, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)

#define CUBLAS_CHECK(call)                                                             \
  do {                                                                                 \
    const cublasStatus_t um_cublas_error_ = (call);                                    \
    if (um_cublas_error_ != CUBLAS_STATUS_SUCCESS) {                                   \
      return ::ultramem::cuda::CublasError(um_cublas_error_, #call, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)
