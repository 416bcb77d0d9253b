// Implementation of chain_probe.cuh.
#include "compute_node/cuda/chain_probe.cuh"

#include <algorithm>
#include <vector>

#include "common/status.h"
#include "compute_node/cuda/cuda_check.h"
#include "compute_node/cuda/device_buffer.h"
#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {
namespace {

// Every block reads the value its predecessor's block wrote (L2) and writes it plus one.
template <bool kEarly>
__global__ void ChainKernel(const int* in, int* out) {
  if (kEarly) AllowDependents();
  GridDependencyWait();
  if (!kEarly) AllowDependents();
  if (threadIdx.x == 0) out[blockIdx.x] = __ldcg(in + blockIdx.x) + 1;
}

}  // namespace

absl::StatusOr<ChainProbe> MeasureKernelChain(int kernels, int blocks, int iters) {
  DeviceBuffer<int> buf;
  UM_RETURN_IF_ERROR(buf.Reserve(2 * blocks));
  CUDA_CHECK(cudaMemset(buf.get(), 0, 2 * blocks * sizeof(int)));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  auto measure = [&](bool pdl, bool early) -> absl::StatusOr<double> {
    ScopedPdl scope(pdl);
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int k = 0; k < kernels; ++k) {
      const int* in = buf.get() + (k % 2) * blocks;
      int* out = buf.get() + ((k + 1) % 2) * blocks;
      LaunchKernel(early ? ChainKernel<true> : ChainKernel<false>, dim3(blocks), dim3(128), 0, stream, in, out);
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    std::vector<float> ms;
    for (int i = 0; i < iters + 3; ++i) {
      cudaEventRecord(e0, stream);
      cudaGraphLaunch(exec, stream);
      cudaEventRecord(e1, stream);
      CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      cudaEventElapsedTime(&t, e0, e1);
      if (i >= 3) ms.push_back(t);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2] * 1000.0 / kernels;
  };
  ChainProbe p;
  UM_ASSIGN_OR_RETURN(p.plain_us, measure(false, false));
  UM_ASSIGN_OR_RETURN(p.pdl_us, measure(true, false));
  UM_ASSIGN_OR_RETURN(p.pdl_early_us, measure(true, true));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
  return p;
}

}  // namespace ultramem::cuda
