// Implementation of gemm.h. cuBLAS is column-major: the row-major y[T, out] is column-major
// yᵀ[out, T] = W(col-major [in, out])ᵀ · xᵀ(col-major [in, T]).
#include "compute_node/cuda/gemm.h"

#include <cublasLt.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "common/status.h"

#include "compute_node/cuda/cuda_check.h"
#include "compute_node/cuda/gemm_mma.cuh"
#include "compute_node/cuda/gemv.cuh"

namespace ultramem::cuda {

namespace {

// cuBLASLt with the algorithm chosen by timing: for each (device, stream, shape) the heuristic's
// candidates run on first eager use (into a scratch output, a few times each) and the fastest is
// kept. cuBLAS's default choice for skinny products (tens of tokens) leaves most SMs idle. During
// stream capture an untuned shape takes the heuristic's first candidate (the engine runs a step
// eagerly before capturing it, so its graphs get tuned choices). UM_CUDA_GEMM_TUNE=0: plain
// cublasGemmEx.
class TunedGemm {
 public:
  static TunedGemm& Get() {
    static TunedGemm* tuned = new TunedGemm;  // never destroyed: engines may outlive statics
    return *tuned;
  }
  static bool Enabled() {
    static const bool enabled = [] {
      const char* v = std::getenv("UM_CUDA_GEMM_TUNE");
      return v == nullptr || std::strcmp(v, "0") != 0;
    }();
    return enabled;
  }

  // false: no cuBLASLt plan for this product (the caller uses cublasGemmEx).
  absl::StatusOr<bool> Run(const __nv_bfloat16* x, int64_t tokens, const __nv_bfloat16* w, int64_t out,
                           int64_t in, float* y, bool accumulate, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (lt_ == nullptr && cublasLtCreate(&lt_) != CUBLAS_STATUS_SUCCESS) return false;
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    Workspace& ws = workspaces_[{device, stream}];
    if (ws.ptr == nullptr && !capturing) {
      CUDA_CHECK(cudaMalloc(&ws.ptr, kWorkspaceBytes));
      ws.bytes = kWorkspaceBytes;
    }
    const Key key{device, stream, tokens, out, in, ws.bytes};
    auto it = plans_.find(key);
    if (it == plans_.end()) {
      Plan plan;
      UM_RETURN_IF_ERROR(MakePlan(tokens, out, in, ws.bytes, &plan));
      if (plan.candidates.empty()) return false;
      if (!capturing) UM_RETURN_IF_ERROR(Tune(&plan, x, tokens, w, out, in, ws, stream));
      if (capturing) {  // untuned: use it now, tune on a later eager call
        return Launch(plan, plan.candidates[0], x, w, y, accumulate, ws, stream);
      }
      it = plans_.emplace(key, std::move(plan)).first;
    }
    return Launch(it->second, it->second.candidates[it->second.best], x, w, y, accumulate, ws, stream);
  }

 private:
  static constexpr size_t kWorkspaceBytes = size_t{8} << 20;
  struct Workspace {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  struct Key {
    int device;
    cudaStream_t stream;
    int64_t tokens, out, in;
    size_t workspace;
    bool operator<(const Key& o) const {
      return std::tie(device, stream, tokens, out, in, workspace) <
             std::tie(o.device, o.stream, o.tokens, o.out, o.in, o.workspace);
    }
  };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    std::vector<cublasLtMatmulAlgo_t> candidates;
    size_t best = 0;
  };

  // Column-major as GemmBf16: yᵀ[out, T] = (W as col-major [in, out])ᵀ · xᵀ (col-major [in, T]).
  absl::Status MakePlan(int64_t tokens, int64_t out, int64_t in, size_t workspace, Plan* plan) {
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, in, out, in));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, in, tokens, in));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, CUDA_R_32F, out, tokens, out));
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int returned = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_, plan->desc, plan->a, plan->b, plan->c, plan->c,
                                                             pref, kCandidates, results, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS) returned = 0;
    for (int i = 0; i < returned; ++i) {
      if (results[i].state == CUBLAS_STATUS_SUCCESS) plan->candidates.push_back(results[i].algo);
    }
    return absl::OkStatus();
  }

  absl::Status Tune(Plan* plan, const __nv_bfloat16* x, int64_t tokens, const __nv_bfloat16* w,
                    int64_t out, int64_t in, const Workspace& ws, cudaStream_t stream) {
    if (plan->candidates.size() == 1) return absl::OkStatus();
    const size_t need = static_cast<size_t>(tokens * out);
    if (need > scratch_floats_) {
      if (scratch_ != nullptr) CUDA_CHECK(cudaFree(scratch_));
      scratch_ = nullptr;
      CUDA_CHECK(cudaMalloc(&scratch_, need * sizeof(float)));
      scratch_floats_ = need;
    }
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    float best_ms = 0.0f;
    bool have = false;
    for (size_t i = 0; i < plan->candidates.size(); ++i) {
      bool ok = true;
      for (int r = 0; r < 2 && ok; ++r) ok = Launch(*plan, plan->candidates[i], x, w, scratch_, false, ws, stream).value_or(false);
      if (!ok) continue;
      cudaEventRecord(start, stream);
      for (int r = 0; r < 5; ++r) Launch(*plan, plan->candidates[i], x, w, scratch_, false, ws, stream).IgnoreError();
      cudaEventRecord(stop, stream);
      float ms = 0.0f;
      if (cudaEventSynchronize(stop) != cudaSuccess || cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) continue;
      if (!have || ms < best_ms) {
        best_ms = ms;
        plan->best = i;
        have = true;
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaGetLastError();  // a candidate that failed to launch leaves no sticky error
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Launch(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const __nv_bfloat16* x,
                              const __nv_bfloat16* w, float* y, bool accumulate, const Workspace& ws,
                              cudaStream_t stream) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cublasStatus_t st = cublasLtMatmul(lt_, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, y, plan.c, y,
                                             plan.c, &algo, ws.ptr, ws.bytes, stream);
    return st == CUBLAS_STATUS_SUCCESS;
  }

  static constexpr int kCandidates = 8;
  std::mutex mu_;
  cublasLtHandle_t lt_ = nullptr;
  std::map<std::pair<int, cudaStream_t>, Workspace> workspaces_;
  std::map<Key, Plan> plans_;
  float* scratch_ = nullptr;
  size_t scratch_floats_ = 0;
};

}  // namespace

absl::Status GemmBf16(cublasHandle_t handle, const __nv_bfloat16* x, int64_t tokens,
                      const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim, float* y,
                      bool accumulate) {
  if (tokens == 0) return absl::OkStatus();
  if (TunedGemm::Enabled()) {
    cudaStream_t stream = nullptr;
    CUBLAS_CHECK(cublasGetStream(handle, &stream));
    UM_ASSIGN_OR_RETURN(bool done, TunedGemm::Get().Run(x, tokens, w, out_dim, in_dim, y, accumulate, stream));
    if (done) return absl::OkStatus();
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out_dim),
                            static_cast<int>(tokens), static_cast<int>(in_dim), &alpha, w,
                            CUDA_R_16BF, static_cast<int>(in_dim), x, CUDA_R_16BF,
                            static_cast<int>(in_dim), &beta, y, CUDA_R_32F,
                            static_cast<int>(out_dim), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status MatMulBf16(cublasHandle_t handle, cudaStream_t stream, const __nv_bfloat16* x,
                        int64_t tokens, const __nv_bfloat16* w, int64_t out_dim, int64_t in_dim,
                        float* y, bool accumulate) {
  if (tokens >= 1 && tokens <= GemvMaxTokens() && in_dim % 8 == 0) {
    LaunchGemvBf16(x, static_cast<int>(tokens), w, static_cast<int>(out_dim),
                   static_cast<int>(in_dim), y, accumulate, stream);
    CUDA_CHECK(cudaGetLastError());
    return absl::OkStatus();
  }
  if (tokens <= kMmaPreferredMaxTokens && in_dim % 32 == 0 && GemmMmaEnabled()) {
    GemvArgs a;
    a.tokens = static_cast<int>(tokens);
    a.out_dim = static_cast<int>(out_dim);
    a.in_dim = static_cast<int>(in_dim);
    a.w = w;
    a.x = x;
    a.output = accumulate ? GemvOutput::kAccumulate : GemvOutput::kStore;
    a.y = y;
    LaunchGemmMma(a, stream);
    CUDA_CHECK(cudaGetLastError());
    return absl::OkStatus();
  }
  return GemmBf16(handle, x, tokens, w, out_dim, in_dim, y, accumulate);
}

absl::Status KeyScoresGemm(cublasHandle_t handle, const float* qn, const float* keys, int tokens,
                           int heads, int key_rows, int key_dim, float* scores) {
  if (tokens == 0) return absl::OkStatus();
  // Column-major: scoresᵀ[key_rows, T] = K(col-major [Dk, key_rows])ᵀ · qnᵀ(col-major [Dk, T]),
  // batched over heads for each side (strides skip the other side's planes).
  const float alpha = 1.0f, beta = 0.0f;
  const long long plane_keys = static_cast<long long>(key_rows) * key_dim;
  const long long plane_scores = static_cast<long long>(tokens) * key_rows;
  for (int side = 0; side < 2; ++side) {
    CUBLAS_CHECK(cublasSgemmStridedBatched(
        handle, CUBLAS_OP_T, CUBLAS_OP_N, key_rows, tokens, key_dim, &alpha, keys + side * plane_keys,
        key_dim, 2 * plane_keys, qn + static_cast<long long>(side) * tokens * key_dim, key_dim, 0,
        &beta, scores + side * plane_scores, key_rows, 2 * plane_scores, heads));
  }
  return absl::OkStatus();
}

}  // namespace ultramem::cuda
