// The CUDA engine's class and device-side state, shared by the files that implement it:
// cuda_engine.cc (weights, step buffers, the per-op step on two streams, graphs, Forward),
// cuda_engine_decode_kernel.cc (the persistent decode kernel's path and its trace) and
// cuda_engine_profile.cc (the per-op profile). Internal to compute_node/cuda: everything else
// goes through cuda_engine.h, which names no CUDA type.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/status.h"
#include "compute_node/cuda/cuda_check.h"
#include "compute_node/cuda/decode_kernel.cuh"
#include "compute_node/cuda/device_buffer.h"
#include "compute_node/cuda/gemv.cuh"
#include "compute_node/cuda/kv_cache.cuh"
#include "compute_node/engine.h"

namespace ultramem {
namespace cuda {

using bf16 = __nv_bfloat16;

// A sequence's KV cache: one allocation [L][K|V][capacity][n_kv·hd] bf16.
class CudaSequence : public Sequence {
 public:
  CudaSequence(int layers, int width, int max_positions)
      : layers_(layers), width_(width), max_positions_(max_positions) {}

  int64_t CacheBytes() const override {
    return static_cast<int64_t>(cache_.size()) * static_cast<int64_t>(sizeof(bf16));
  }
  // Grows the capacity to hold `positions`, keeping the first length() positions (on `stream`).
  absl::Status Reserve(int64_t positions, cudaStream_t stream) {
    if (positions <= capacity_) return absl::OkStatus();
    int64_t cap = std::max<int64_t>(positions, std::max<int64_t>(64, capacity_ * 2));
    cap = std::min<int64_t>(cap, max_positions_);
    DeviceBuffer<bf16> grown;
    UM_RETURN_IF_ERROR(grown.Reserve(static_cast<size_t>(2 * layers_ * cap * width_)));
    if (length_ > 0) {
      const size_t row_bytes = static_cast<size_t>(width_) * sizeof(bf16);
      CUDA_CHECK(cudaMemcpy2DAsync(grown.get(), cap * row_bytes, cache_.get(), capacity_ * row_bytes,
                                   length_ * row_bytes, 2 * layers_, cudaMemcpyDeviceToDevice,
                                   stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    cache_ = std::move(grown);
    capacity_ = cap;
    return absl::OkStatus();
  }
  cuda::TokenKv Token(int64_t position) const {
    return cuda::TokenKv{cache_.get(), static_cast<int32_t>(capacity_),
                         static_cast<int32_t>(position)};
  }
  void SetLength(int64_t n) { length_ = n; }

 private:
  int layers_, width_, max_positions_;
  DeviceBuffer<bf16> cache_;
  int64_t capacity_ = 0;
};

struct DeviceBlock {
  DeviceBuffer<float> attn_norm, ffn_norm;
  DeviceBuffer<bf16> wqkv, wo, w_gate_up, w_down;
};

struct DeviceMemoryLayer {
  int input_block = 0, output_block = 0;
  int u_owner = 0;  // the layer whose `u` holds u_{input_block} (the first reading that block)
  DeviceBuffer<bf16> query_proj, keys_hat, values_proj, values;
  DeviceBuffer<float> query_norm, cores, core_u, core_v;
  // The wide steps' key scores: K̂ rows three times over in bf16 with the query parts (gemm.h's
  // KeyScoresGemmSplit), or K̂ in fp32 for SGEMM (UM_CUDA_KEYSCORE_SGEMM=1, as before 2026-12).
  DeviceBuffer<bf16> keys3, q_parts;
  DeviceBuffer<float> keys_f32;
  DeviceBuffer<int64_t> shuffle;
  // Per-step buffers.
  DeviceBuffer<bf16> u, y;
  DeviceBuffer<float> q, qn, scores, sel_scores, y_f32;
  DeviceBuffer<int64_t> rows, t_index;
  DeviceBuffer<int32_t> groups;
  PinnedBuffer<int64_t> host_rows;
  PinnedBuffer<int32_t> host_groups;
  PinnedBuffer<float> host_scores, host_y;
  cudaEvent_t fork = nullptr, join = nullptr;
};

struct Graph {
  cudaGraphExec_t exec = nullptr;
};

class CudaEngine : public Engine {
 public:
  CudaEngine(std::shared_ptr<const ModelWeights> weights, RowPooler* pooler,
             const EngineOptions& options)
      : w_(std::move(weights)), cfg_(w_->config), pooler_(pooler), options_(options) {}
  ~CudaEngine() override;

  absl::Status Init();
  const ModelConfig& config() const override { return cfg_; }
  std::unique_ptr<Sequence> NewSequence() override {
    return std::make_unique<CudaSequence>(cfg_.num_layers, cfg_.num_key_value_heads * cfg_.head_dim,
                                          cfg_.max_position_embeddings);
  }
  absl::Status Forward(absl::Span<const SequenceInput> batch, const ForwardOptions& options,
                       ForwardOutput* out) override;
  absl::StatusOr<double> ReplayLastStep(int iterations, bool graph);

 private:
  absl::Status EnsureCapacity(int tokens, int rows);
  // Enqueues the whole forward of `tokens` tokens (inputs already on the device) on main_ and
  // mem_, joined back into main_. Host pooling synchronizes; device pooling never does.
  // `decode`: every token from a different sequence (attention may then append K/V itself).
  absl::Status Enqueue(int tokens, int rows, bool decode);
  absl::Status EnqueueMemoryQuery(int j, int tokens, cudaStream_t stream, cublasHandle_t blas);
  absl::Status EnqueueStep(int tokens, int rows, bool decode, bool graph);
  // The decode kernel's path for `tokens` ≤ kMaxDecodeKernelTokens decode tokens.
  absl::Status EnqueueDecodeKernel(int tokens, int rows);
  // Memory layer j's steps 1–10 after its input block (forked onto mem_, or selections handed to
  // the host RowPooler), and its join before the output block's value projection (y in d.y).
  absl::Status ForkMemoryLayer(int j, int tokens, std::vector<std::unique_ptr<PendingPool>>* pending);
  absl::Status JoinMemoryLayer(int j, int tokens, std::vector<std::unique_ptr<PendingPool>>* pending);
  // A GEMV over RMSNorm(x_) rows (weights `norm_weight`): the caller sets the output fields.
  GemvArgs NormedGemv(int tokens, int out_dim, const __nv_bfloat16* w, const float* norm_weight) const;
  // The final norm and lm_head for the `rows` output rows.
  absl::Status EnqueueLogits(int rows);
  // The decode kernel's phase list and cut points for the current buffers (EnsureCapacity).
  absl::Status BuildDecodePhases();
  bool UseDecodeKernel(int tokens, bool decode) const;
  void PrintDecodeTrace();
  // UM_CUDA_PROFILE=1: one more eager step after ReplayLastStep's, with an event after every op on
  // each stream; PrintOpProfile sums the gaps by op (serialized: no PDL overlap across events).
  void Mark(const char* op, cudaStream_t stream);
  void PrintOpProfile();
  // UM_CUDA_ABLATE=op,op,... (read once; a timing experiment, the outputs are then wrong): the
  // named ops are left out of every step, so the step time without them shows what they add to
  // the critical path. Names as in the op profile (qkv, attention, wo, gate_up, down,
  // values_proj, lm_head, mem.query_proj, mem.query_norm, mem.key_scores, mem.top_m, mem.pool;
  // qkv, gate_up and lm_head are the products alone where a norm or SwiGLU kernel stands apart),
  // or "memory" for each memory layer's whole fork, join and values_proj ("memory.J" for layer J
  // alone); mem.top_m also leaves out mem.pool (it would read unset rows). Two leave out a
  // dependency instead of an op: "mem.join" (the main stream waits for the memory layers at the
  // end of the step, not before their output blocks: how much of the side chain is on the
  // critical path) and "mem.overlap" (each chain runs on the main stream: its length with
  // nothing beside it; "mem.overlap.J" layer J's alone).
  static bool Ablated(const char* op);
  // `op` ("memory", "mem.overlap") for every memory layer, or "op.j" for layer j alone.
  static bool AblatedForLayer(const char* op, int j);
  void ClearGraphs();

  std::shared_ptr<const ModelWeights> w_;
  const ModelConfig& cfg_;
  RowPooler* pooler_;
  EngineOptions options_;
  bool device_pool_ = false;
  int sm_count_ = 0;

  cudaStream_t main_ = nullptr, mem_ = nullptr;
  cublasHandle_t blas_main_ = nullptr, blas_mem_ = nullptr;
  DeviceBuffer<uint8_t> workspace_main_, workspace_mem_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;

  DeviceBuffer<bf16> embed_, lm_head_;
  DeviceBuffer<float> final_norm_;
  DeviceBuffer<float2> rope_;
  std::vector<DeviceBlock> blocks_;
  std::vector<DeviceMemoryLayer> mem_layers_;

  // Step buffers, sized for capacity_tokens_ / capacity_rows_.
  int capacity_tokens_ = 0, capacity_rows_ = 0;
  DeviceBuffer<int32_t> ids_, out_rows_, attn_counters_;
  DeviceBuffer<TokenKv> kv_;
  DeviceBuffer<float> x_, qkv_, gate_up_, attn_scratch_, logits_;
  DeviceBuffer<bf16> xn_, attn_, act_, final_xn_;
  PinnedBuffer<int32_t> host_ids_, host_out_rows_;
  PinnedBuffer<TokenKv> host_kv_;
  PinnedBuffer<float> host_logits_;
  PinnedBuffer<int64_t> host_selections_;

  // The decode kernel's phases; cuts_: where a launch ends for a memory layer's fork or join.
  struct Cut {
    int at;  // the phase index the next launch starts at
    bool fork;
    int layer;
  };
  std::vector<DecodePhase> host_phases_;
  std::vector<Cut> cuts_;
  int max_in_dim_ = 0;
  int decode_grid_ = 0;
  DeviceBuffer<DecodePhase> phases_;
  DeviceBuffer<unsigned long long> grid_barrier_;
  DeviceBuffer<long long> decode_trace_;  // UM_CUDA_DECODE_TRACE=1: block 0's phase timestamps

  std::map<int, Graph> graphs_;  // decode steps by batch size (· 2, + 1 on the decode kernel)
  bool profiling_ = false;
  std::vector<cudaEvent_t> profile_events_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks_main_, marks_mem_;
  int last_tokens_ = 0, last_rows_ = 0;
  bool last_decode_ = false, last_graph_ = false;
};

}  // namespace cuda
}  // namespace ultramem
