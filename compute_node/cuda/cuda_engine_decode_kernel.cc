// The CUDA engine's path through the persistent decode kernel (UM_CUDA_DECODE_KERNEL=1, decode
// steps of at most kMaxDecodeKernelTokens tokens; decode_kernel.cuh): the phase list and its
// cuts at the memory layers' fork and join points, the launches between them, and the kernel's
// trace (UM_CUDA_DECODE_TRACE=1).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "compute_node/cuda/attention.cuh"
#include "compute_node/cuda/cuda_engine_internal.h"
#include "compute_node/cuda/embed.cuh"
#include "compute_node/cuda/launch.cuh"

namespace ultramem {
namespace cuda {

absl::Status CudaEngine::BuildDecodePhases() {
  host_phases_.clear();
  cuts_.clear();
  const int D = cfg_.hidden_size, F = cfg_.intermediate_size;
  const int nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const int J = cfg_.NumMemoryLayers();
  auto add = [&](DecodePhaseKind kind, const bf16* w, int out_dim, int in_dim) -> DecodePhase& {
    DecodePhase ph;
    ph.kind = kind;
    ph.w = w;
    ph.out_dim = out_dim;
    ph.in_dim = in_dim;
    host_phases_.push_back(ph);
    return host_phases_.back();
  };
  for (int b = 0; b < cfg_.num_layers; ++b) {
    DeviceBlock& bw = blocks_[b];
    add(DecodePhaseKind::kQkv, bw.wqkv.get(), (nh + 2 * nkv) * hd, D).norm_weight = bw.attn_norm.get();
    add(DecodePhaseKind::kAttention, nullptr, 0, 0).layer = b;
    add(DecodePhaseKind::kWo, bw.wo.get(), D, nh * hd);  // input: the attention partials
    DecodePhase& gu = add(DecodePhaseKind::kGateUp, bw.w_gate_up.get(), F, D);
    gu.norm_weight = bw.ffn_norm.get();
    for (int j = 0; j < J; ++j) {
      if (mem_layers_[j].input_block != b) continue;
      if (gu.normed_out == nullptr) gu.normed_out = mem_layers_[j].u.get();
      cuts_.push_back({static_cast<int>(host_phases_.size()), true, j});
    }
    add(DecodePhaseKind::kDown, bw.w_down.get(), D, F).x = act_.get();
    const int first_vp = static_cast<int>(host_phases_.size());
    for (int j = 0; j < J; ++j) {
      if (mem_layers_[j].output_block != b) continue;
      const MemoryConfig& mc = *cfg_.memory;
      cuts_.push_back({first_vp, false, j});
      add(DecodePhaseKind::kValuesProj, mem_layers_[j].values_proj.get(), D,
          mc.value_expand * mc.value_dim).x = mem_layers_[j].y.get();
    }
  }
  max_in_dim_ = 0;
  for (const DecodePhase& ph : host_phases_) max_in_dim_ = std::max(max_in_dim_, ph.in_dim);
  UM_RETURN_IF_ERROR(phases_.Upload(host_phases_.data(), host_phases_.size()));
  // With memory layers on the device, a few SMs stay out of the decode kernel for the side
  // stream (UM_CUDA_DECODE_KERNEL_FREE_SMS, default 8): the kernel takes every register of its SMs.
  int free_sms = 0;
  if (J > 0 && device_pool_) {
    free_sms = EnvInt("UM_CUDA_DECODE_KERNEL_FREE_SMS", 8);
  }
  decode_grid_ = std::max(1, sm_count_ - std::max(0, free_sms));
  const char* trace = std::getenv("UM_CUDA_DECODE_TRACE");
  if (trace != nullptr && std::strcmp(trace, "1") == 0) {
    UM_RETURN_IF_ERROR(decode_trace_.Reserve(kTracePoints * host_phases_.size()));
  }
  if (grid_barrier_.size() == 0) {
    UM_RETURN_IF_ERROR(grid_barrier_.Reserve(1));
    CUDA_CHECK(cudaMemset(grid_barrier_.get(), 0, sizeof(unsigned long long)));
  }
  return absl::OkStatus();
}

bool CudaEngine::UseDecodeKernel(int T, bool decode) const {
  if (!decode || T > kMaxDecodeKernelTokens || host_phases_.empty()) return false;
  // Off unless asked for: on the H200 it is slower than the per-op kernels (RESULTS.md).
  const char* env = std::getenv("UM_CUDA_DECODE_KERNEL");
  if (env == nullptr || std::strcmp(env, "1") != 0) return false;
  return DecodeKernelSupports(T, cfg_.head_dim, cfg_.num_attention_heads, cfg_.num_key_value_heads,
                              host_phases_.data(), static_cast<int>(host_phases_.size()));
}

absl::Status CudaEngine::EnqueueDecodeKernel(int T, int R) {
  ScopedPdl pdl(true);  // the side stream's kernels and the lm_head GEMV
  const int J = cfg_.NumMemoryLayers();
  LaunchEmbed(embed_.get(), ids_.get(), T, cfg_.hidden_size, x_.get(), main_);
  DecodeKernelArgs a;
  a.phases = phases_.get();
  a.tokens = T;
  a.hidden = cfg_.hidden_size;
  a.eps = cfg_.rms_norm_eps;
  a.x = x_.get();
  a.qkv = qkv_.get();
  a.act = act_.get();
  a.kv = kv_.get();
  a.rope = rope_.get();
  a.num_heads = cfg_.num_attention_heads;
  a.num_kv_heads = cfg_.num_key_value_heads;
  a.head_dim = cfg_.head_dim;
  a.splits = DecodeKernelSplits(T, cfg_.num_attention_heads, cfg_.num_key_value_heads, decode_grid_,
                                AttentionSplits(T, cfg_.num_key_value_heads, sm_count_, cfg_.max_position_embeddings));
  a.scratch = attn_scratch_.get();
  a.barrier = grid_barrier_.get();
  a.grid = decode_grid_;
  a.trace = decode_trace_.size() > 0 ? decode_trace_.get() : nullptr;
  std::vector<std::unique_ptr<PendingPool>> pending(J);
  absl::Status status;
  int begin = 0;
  auto run_to = [&](int end) {
    if (end <= begin) return;
    a.begin = begin;
    a.end = end;
    LaunchDecodeKernel(a, max_in_dim_, main_);
    begin = end;
  };
  for (const Cut& cut : cuts_) {
    run_to(cut.at);
    status = cut.fork ? ForkMemoryLayer(cut.layer, T, &pending) : JoinMemoryLayer(cut.layer, T, &pending);
    if (!status.ok()) break;
  }
  if (status.ok()) run_to(static_cast<int>(host_phases_.size()));
  for (auto& p : pending) {
    if (p) p->Wait().IgnoreError();
  }
  UM_RETURN_IF_ERROR(status);
  CUDA_CHECK(cudaGetLastError());
  return EnqueueLogits(R);
}

// Block 0's view of the last step's decode-kernel phases (UM_CUDA_DECODE_TRACE=1), by kind:
// waiting at the grid barrier, staging the input, the rest (weights, products, outputs).
void CudaEngine::PrintDecodeTrace() {
  std::vector<long long> t(decode_trace_.size());
  if (cudaMemcpy(t.data(), decode_trace_.get(), t.size() * sizeof(long long), cudaMemcpyDeviceToHost) != cudaSuccess) return;
  static const char* kNames[] = {"qkv", "attention", "wo", "gate_up", "down", "values_proj"};
  double sum[6][4] = {}, count[6] = {}, gaps = 0;
  for (size_t p = 0; p < host_phases_.size(); ++p) {
    const long long* q = &t[kTracePoints * p];
    if (p > 0) gaps += (q[0] - t[kTracePoints * (p - 1) + 3]) * 1e-3;
    const int k = static_cast<int>(host_phases_[p].kind);
    const long long staged = q[2] != 0 ? q[2] : q[1];
    sum[k][0] += (q[1] - q[0]) * 1e-3;
    sum[k][1] += (staged - q[1]) * 1e-3;
    sum[k][2] += (q[3] - staged) * 1e-3;
    sum[k][3] += (q[2] != 0 ? q[4] : 0) * 1e-3;
    count[k] += 1;
  }
  const long long span = t[kTracePoints * (host_phases_.size() - 1) + 3] - t[0];
  std::fprintf(stderr,
               "decode kernel trace (block 0, tokens %d, grid %d): first phase to last %.1f us, of which "
               "%.1f us between launches (%zu launches)\n",
               last_tokens_, decode_grid_, span * 1e-3, gaps, cuts_.size() + 1);
  std::fprintf(stderr, "  %-12s %6s %10s %10s %10s %12s   (us per phase)\n", "phase", "count", "barrier",
               "stage", "rest", "(weights)");
  for (int k = 0; k < 6; ++k) {
    if (count[k] == 0) continue;
    std::fprintf(stderr, "  %-12s %6.0f %10.2f %10.2f %10.2f %12.2f\n", kNames[k], count[k],
                 sum[k][0] / count[k], sum[k][1] / count[k], sum[k][2] / count[k], sum[k][3] / count[k]);
  }
}

}  // namespace cuda
}  // namespace ultramem
