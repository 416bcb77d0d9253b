// The memory server's one place where CUDA errors become absl::Status (INTERNAL, naming the call,
// file and line): MS_CUDA_CHECK returns the status from the enclosing function.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#define MS_CUDA_CHECK(call)                                                                \
  do {                                                                                     \
    const cudaError_t ms_cuda_error_ = (call);                                             \
    if (ms_cuda_error_ != cudaSuccess) {                                                   \
      return ::absl::InternalError(::absl::StrCat("CUDA error ", cudaGetErrorName(ms_cuda_error_), \
                                                  " (", cudaGetErrorString(ms_cuda_error_), ") in ", \
                                                  #call, " at ", __FILE__, ":", __LINE__)); \
    }                                                                                      \
  } while (0)
