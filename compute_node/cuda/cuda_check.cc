// Implementation of compute_node/cuda/cuda_check.h.
#include "compute_node/cuda/cuda_check.h"

#include "absl/strings/str_cat.h"

namespace ultramem::cuda {

absl::Status CudaError(cudaError_t error, const char* call, const char* file, int line) {
  return absl::InternalError(absl::StrCat("CUDA error ", cudaGetErrorName(error), " (",
                                          cudaGetErrorString(error), ") in ", call, " at ", file,
                                          ":", line));
}

absl::Status CublasError(cublasStatus_t error, const char* call, const char* file, int line) {
  return absl::InternalError(absl::StrCat("cuBLAS error ", cublasGetStatusName(error), " (",
                                          cublasGetStatusString(error), ") in ", call, " at ",
                                          file, ":", line));
}

}  // namespace ultramem::cuda
