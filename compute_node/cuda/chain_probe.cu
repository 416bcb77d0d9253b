// Implementation of chain_probe.cuh.
#include "compute_node/cuda/chain_probe.cuh"

#include <algorithm>
#include <functional>
#include <vector>

#include "common/status.h"
#include "compute_node/cuda/cuda_check.h"
#include "compute_node/cuda/device_buffer.h"
#include "compute_node/cuda/gemv.cuh"
#include "compute_node/cuda/launch.cuh"

namespace ultramem::cuda {
namespace {

// Every block reads the value its predecessor's block wrote (L2) and writes it plus one.
template <bool kEarly, bool kSleep = false>
__global__ void ChainKernel(const int* in, int* out) {
  if (kEarly) AllowDependents();
  if (kSleep) __nanosleep(2000);  // pre-wait work that only overlaps if the kernel starts early
  GridDependencyWait();
  if (!kEarly) AllowDependents();
  if (threadIdx.x == 0) out[blockIdx.x] = __ldcg(in + blockIdx.x) + 1;
}

// Captures what `enqueue` launches on a stream of its own into a graph and returns the median
// milliseconds of `iters` replays (after 3 unmeasured ones).
absl::StatusOr<double> GraphMedianMs(int iters, const std::function<void(cudaStream_t)>& enqueue) {
  cudaStream_t stream = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  auto run = [&]() -> absl::StatusOr<double> {
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    enqueue(stream);
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    std::vector<float> ms;
    for (int i = 0; i < iters + 3; ++i) {
      CUDA_CHECK(cudaEventRecord(e0, stream));
      CUDA_CHECK(cudaGraphLaunch(exec, stream));
      CUDA_CHECK(cudaEventRecord(e1, stream));
      CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 3) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  absl::StatusOr<double> result = run();
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (e0 != nullptr) cudaEventDestroy(e0);
  if (e1 != nullptr) cudaEventDestroy(e1);
  if (stream != nullptr) cudaStreamDestroy(stream);
  return result;
}

}  // namespace

absl::StatusOr<ChainProbe> MeasureKernelChain(int kernels, int blocks, int iters) {
  DeviceBuffer<int> buf;
  UM_RETURN_IF_ERROR(buf.Reserve(2 * blocks));
  CUDA_CHECK(cudaMemset(buf.get(), 0, 2 * blocks * sizeof(int)));
  auto measure = [&](bool pdl, bool early, bool sleep = false) -> absl::StatusOr<double> {
    ScopedPdl scope(pdl);
    UM_ASSIGN_OR_RETURN(double ms, GraphMedianMs(iters, [&](cudaStream_t stream) {
      for (int k = 0; k < kernels; ++k) {
        const int* in = buf.get() + (k % 2) * blocks;
        int* out = buf.get() + ((k + 1) % 2) * blocks;
        LaunchKernel(sleep ? ChainKernel<true, true> : early ? ChainKernel<true> : ChainKernel<false>, dim3(blocks),
                     dim3(128), 0, stream, in, out);
      }
    }));
    return ms * 1000.0 / kernels;
  };
  ChainProbe p;
  UM_ASSIGN_OR_RETURN(p.plain_us, measure(false, false));
  UM_ASSIGN_OR_RETURN(p.pdl_us, measure(true, false));
  UM_ASSIGN_OR_RETURN(p.pdl_early_us, measure(true, true));
  UM_ASSIGN_OR_RETURN(p.pdl_sleep_us, measure(true, true, true));
  return p;
}

absl::StatusOr<GemvChainProbe> MeasureGemvChain(int model_dim, int ffn_dim, int qkv_width, int layers, int iters) {
  const int D = model_dim, F = ffn_dim;
  const size_t per_layer = static_cast<size_t>(qkv_width) * D + static_cast<size_t>(D) * D +
                           static_cast<size_t>(2) * F * D + static_cast<size_t>(D) * F;
  DeviceBuffer<__nv_bfloat16> w, attn, act;
  DeviceBuffer<float> x, qkv, norm;
  UM_RETURN_IF_ERROR(w.Reserve(per_layer * layers));
  UM_RETURN_IF_ERROR(attn.Reserve(D));
  UM_RETURN_IF_ERROR(act.Reserve(F));
  UM_RETURN_IF_ERROR(x.Reserve(D));
  UM_RETURN_IF_ERROR(qkv.Reserve(qkv_width));
  UM_RETURN_IF_ERROR(norm.Reserve(D));
  CUDA_CHECK(cudaMemset(w.get(), 0, per_layer * layers * 2));
  CUDA_CHECK(cudaMemset(attn.get(), 0, D * 2));
  CUDA_CHECK(cudaMemset(x.get(), 0, D * 4));
  CUDA_CHECK(cudaMemset(norm.get(), 0, D * 4));
  auto measure = [&](bool staged) -> absl::StatusOr<double> {
    ScopedPdl scope(true);
    UM_ASSIGN_OR_RETURN(double ms, GraphMedianMs(iters, [&](cudaStream_t stream) {
      for (int l = 0; l < layers; ++l) {
        const __nv_bfloat16* wqkv = w.get() + per_layer * l;
        const __nv_bfloat16* wo = wqkv + static_cast<size_t>(qkv_width) * D;
        const __nv_bfloat16* wgu = wo + static_cast<size_t>(D) * D;
        const __nv_bfloat16* wdown = wgu + static_cast<size_t>(2) * F * D;
        GemvArgs a;
        a.tokens = 1;
        a.staged = staged;
        a.eps = 1e-5f;
        a.norm_weight = norm.get();
        GemvArgs q = a, o = a, gu = a, dn = a;
        q.out_dim = qkv_width, q.in_dim = D, q.w = wqkv, q.x_f32 = x.get(), q.y = qkv.get();
        o.out_dim = D, o.in_dim = D, o.w = wo, o.x = attn.get(), o.output = GemvOutput::kAccumulate, o.y = x.get();
        gu.out_dim = F, gu.in_dim = D, gu.w = wgu, gu.x_f32 = x.get(), gu.output = GemvOutput::kSwiGlu;
        gu.act = act.get();
        dn.out_dim = D, dn.in_dim = F, dn.w = wdown, dn.x = act.get(), dn.output = GemvOutput::kAccumulate;
        dn.y = x.get();
        for (const GemvArgs* g : {&q, &o, &gu, &dn}) LaunchGemv(*g, stream);
      }
    }));
    return ms * 1000.0 / layers;
  };
  GemvChainProbe p;
  UM_ASSIGN_OR_RETURN(p.staged_us, measure(true));
  UM_ASSIGN_OR_RETURN(p.register_us, measure(false));
  return p;
}

}  // namespace ultramem::cuda
