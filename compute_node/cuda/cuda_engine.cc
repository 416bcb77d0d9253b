// Implementation of compute_node/cuda/cuda_engine.h; the class is in cuda_engine_internal.h, the
// persistent decode kernel's path in cuda_engine_decode_kernel.cc and the per-op profile in
// cuda_engine_profile.cc. Here: weights upload, per-step buffers, the block loop enqueued on two
// streams (dense work on `main_`, each memory layer's steps 1–10 forked on `mem_` right after its
// input block and joined before its output block's sum), and CUDA graphs of decode steps keyed by
// batch size. Steps of one token use the fused kernels (RMSNorm in the GEMV prologue, SwiGLU in
// the gate/up epilogue, RoPE + K/V append + split merge in the attention kernel), 2–16 tokens the
// tensor-core skinny kernel, both launched with programmatic dependent launch; wider steps use
// cuBLAS. With UM_CUDA_DECODE_KERNEL=1, decode steps of at most 8 tokens run the persistent
// decode kernel instead (an experiment, slower on the H200 so far).
#include "compute_node/cuda/cuda_engine.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cuda/synthetic_fill.cuh"
#include "common/dtype.h"
#include "common/status.h"
#include "compute_node/cuda/attention.cuh"
#include "compute_node/cuda/cuda_check.h"
#include "compute_node/cuda/cuda_engine_internal.h"
#include "compute_node/cuda/decode_kernel.cuh"
#include "compute_node/cuda/device_buffer.h"
#include "compute_node/cuda/embed.cuh"
#include "compute_node/cuda/gemm.h"
#include "compute_node/cuda/gemm_mma.cuh"
#include "compute_node/cuda/gemv.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/memory_score.cuh"
#include "compute_node/cuda/memory_topm.cuh"
#include "compute_node/cuda/pool.cuh"
#include "compute_node/cuda/rms_norm.cuh"
#include "compute_node/cuda/rope.cuh"
#include "compute_node/cuda/swiglu.cuh"

namespace ultramem {
namespace cuda {
namespace {

// The wide steps' key scores by fp32 SGEMM (UM_CUDA_KEYSCORE_SGEMM=1, read once) instead of the
// split bf16 GEMM.
bool KeyScoresBySgemm() {
  static const bool sgemm = EnvInt("UM_CUDA_KEYSCORE_SGEMM", 0) != 0;
  return sgemm;
}

absl::Status UploadBf16(const std::vector<float>& host, DeviceBuffer<bf16>* out) {
  std::vector<uint16_t> converted(host.size());
  for (size_t i = 0; i < host.size(); ++i) converted[i] = F32ToBf16(host[i]);
  UM_RETURN_IF_ERROR(out->Reserve(host.size()));
  CUDA_CHECK(cudaMemcpy(out->get(), converted.data(), host.size() * sizeof(uint16_t),
                        cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status UploadF32(const std::vector<float>& host, DeviceBuffer<float>* out) {
  return out->Upload(host.data(), host.size());
}

// Copies a value table [N, Dv] into device memory as bf16 (BF16 as stored; F32/F16 converted in
// slices so the host never holds a second full copy).
absl::Status UploadValues(const Checkpoint& ckpt, int layer, DeviceBuffer<bf16>* out) {
  const std::string name = absl::StrCat("memory.", layer, ".values");
  if (ckpt.synthetic_values()) {  // declared, not stored: computed in place on the device
    const MemoryConfig& m = *ckpt.config().memory;
    UM_RETURN_IF_ERROR(out->Reserve(static_cast<size_t>(m.NumRows()) * m.value_dim));
    return LaunchFillSyntheticBf16(*ckpt.synthetic_values(), layer, 0, m.NumRows(), 0,
                                   m.value_dim, out->get(), nullptr);
  }
  UM_ASSIGN_OR_RETURN(TensorView view, ckpt.Get(name));
  const size_t count = static_cast<size_t>(view.NumElements());
  UM_RETURN_IF_ERROR(out->Reserve(count));
  if (view.entry->dtype == DType::kBF16) {
    CUDA_CHECK(cudaMemcpy(out->get(), view.data, count * 2, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  constexpr size_t kSlice = size_t{1} << 24;
  std::vector<float> f32(std::min(count, kSlice));
  std::vector<uint16_t> b16(f32.size());
  const size_t elem = DTypeSize(view.entry->dtype);
  for (size_t begin = 0; begin < count; begin += kSlice) {
    const size_t n = std::min(kSlice, count - begin);
    ConvertToF32(view.entry->dtype, view.data + begin * elem, n, f32.data());
    for (size_t i = 0; i < n; ++i) b16[i] = F32ToBf16(f32[i]);
    CUDA_CHECK(cudaMemcpy(out->get() + begin, b16.data(), n * 2, cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

}  // namespace

CudaEngine::~CudaEngine() {
  ClearGraphs();
  for (DeviceMemoryLayer& m : mem_layers_) {
    if (m.fork) cudaEventDestroy(m.fork);
    if (m.join) cudaEventDestroy(m.join);
  }
  for (cudaEvent_t e : profile_events_) cudaEventDestroy(e);
  if (start_) cudaEventDestroy(start_);
  if (stop_) cudaEventDestroy(stop_);
  if (blas_main_) cublasDestroy(blas_main_);
  if (blas_mem_) cublasDestroy(blas_mem_);
  if (main_) cudaStreamDestroy(main_);
  if (mem_) cudaStreamDestroy(mem_);
}

void CudaEngine::ClearGraphs() {
  for (auto& [tokens, g] : graphs_) cudaGraphExecDestroy(g.exec);
  graphs_.clear();
}

absl::Status CudaEngine::Init() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
  if (cfg_.head_dim % 8 != 0 || cfg_.head_dim > kMaxHeadDim ||
      cfg_.num_attention_heads / cfg_.num_key_value_heads > kMaxAttentionGroup) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: head_dim must be a multiple of 8 up to ", kMaxHeadDim,
        " and n_h / n_kv at most ", kMaxAttentionGroup));
  }
  CUDA_CHECK(cudaStreamCreateWithFlags(&main_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&mem_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreate(&start_));
  CUDA_CHECK(cudaEventCreate(&stop_));
  constexpr size_t kWorkspace = size_t{32} << 20;
  UM_RETURN_IF_ERROR(workspace_main_.Reserve(kWorkspace));
  UM_RETURN_IF_ERROR(workspace_mem_.Reserve(kWorkspace));
  CUBLAS_CHECK(cublasCreate(&blas_main_));
  CUBLAS_CHECK(cublasCreate(&blas_mem_));
  CUBLAS_CHECK(cublasSetStream(blas_main_, main_));
  CUBLAS_CHECK(cublasSetStream(blas_mem_, mem_));
  CUBLAS_CHECK(cublasSetWorkspace(blas_main_, workspace_main_.get(), kWorkspace));
  CUBLAS_CHECK(cublasSetWorkspace(blas_mem_, workspace_mem_.get(), kWorkspace));

  UM_RETURN_IF_ERROR(UploadBf16(w_->embed_tokens, &embed_));
  if (!w_->lm_head.empty()) UM_RETURN_IF_ERROR(UploadBf16(w_->lm_head, &lm_head_));
  UM_RETURN_IF_ERROR(UploadF32(w_->final_norm, &final_norm_));
  blocks_.resize(cfg_.num_layers);
  for (int b = 0; b < cfg_.num_layers; ++b) {
    const BlockWeights& s = w_->blocks[b];
    DeviceBlock& d = blocks_[b];
    UM_RETURN_IF_ERROR(UploadF32(s.attn_norm, &d.attn_norm));
    UM_RETURN_IF_ERROR(UploadF32(s.ffn_norm, &d.ffn_norm));
    UM_RETURN_IF_ERROR(UploadBf16(s.wqkv, &d.wqkv));
    UM_RETURN_IF_ERROR(UploadBf16(s.wo, &d.wo));
    UM_RETURN_IF_ERROR(UploadBf16(s.w_gate_up, &d.w_gate_up));
    UM_RETURN_IF_ERROR(UploadBf16(s.w_down, &d.w_down));
  }
  // RoPE table in double on the host, as the CPU engine computes its angles.
  const int half = cfg_.head_dim / 2;
  std::vector<float2> rope(static_cast<size_t>(cfg_.max_position_embeddings) * half);
  for (int p = 0; p < cfg_.max_position_embeddings; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * w_->rope_inv_freq[i];
      rope[static_cast<size_t>(p) * half + i] =
          make_float2(static_cast<float>(std::cos(angle)), static_cast<float>(std::sin(angle)));
    }
  }
  UM_RETURN_IF_ERROR(rope_.Upload(rope.data(), rope.size()));

  device_pool_ = cfg_.NumMemoryLayers() > 0 && options_.value_source != nullptr;
  mem_layers_.resize(cfg_.NumMemoryLayers());
  for (int j = 0; j < cfg_.NumMemoryLayers(); ++j) {
    const MemoryLayerWeights& s = w_->memory[j];
    DeviceMemoryLayer& d = mem_layers_[j];
    d.input_block = s.input_block;
    d.output_block = s.output_block;
    d.u_owner = j;
    for (int i = 0; i < j; ++i) {
      if (mem_layers_[i].input_block == d.input_block) {
        d.u_owner = i;
        break;
      }
    }
    UM_RETURN_IF_ERROR(UploadBf16(s.query_proj, &d.query_proj));
    UM_RETURN_IF_ERROR(UploadF32(s.query_norm, &d.query_norm));
    UM_RETURN_IF_ERROR(UploadBf16(s.keys_hat, &d.keys_hat));
    if (KeyScoresBySgemm()) {
      UM_RETURN_IF_ERROR(UploadF32(s.keys_hat, &d.keys_f32));
    } else {
      UM_RETURN_IF_ERROR(UploadBf16(TripleKeyRows(s.keys_hat, cfg_.memory->key_dim), &d.keys3));
    }
    UM_RETURN_IF_ERROR(UploadF32(s.cores, &d.cores));
    UM_RETURN_IF_ERROR(UploadF32(s.core_u, &d.core_u));
    UM_RETURN_IF_ERROR(UploadF32(s.core_v, &d.core_v));
    UM_RETURN_IF_ERROR(UploadBf16(s.values_proj, &d.values_proj));
    UM_RETURN_IF_ERROR(d.shuffle.Upload(s.shuffle_index.data(), s.shuffle_index.size()));
    if (device_pool_) UM_RETURN_IF_ERROR(UploadValues(*options_.value_source, j, &d.values));
    CUDA_CHECK(cudaEventCreateWithFlags(&d.fork, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&d.join, cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::Status CudaEngine::EnsureCapacity(int tokens, int rows) {
  if (tokens <= capacity_tokens_ && rows <= capacity_rows_) return absl::OkStatus();
  // Graphs hold buffer addresses: they die with the buffers.
  ClearGraphs();
  const int T = std::max(tokens, capacity_tokens_);
  const int R = std::max(rows, capacity_rows_);
  const size_t D = cfg_.hidden_size, F = cfg_.intermediate_size;
  const size_t qkv_width = static_cast<size_t>(cfg_.num_attention_heads + 2 * cfg_.num_key_value_heads) * cfg_.head_dim;
  const size_t attn_width = static_cast<size_t>(cfg_.num_attention_heads) * cfg_.head_dim;
  UM_RETURN_IF_ERROR(ids_.Reserve(T));
  UM_RETURN_IF_ERROR(kv_.Reserve(T));
  UM_RETURN_IF_ERROR(out_rows_.Reserve(R));
  UM_RETURN_IF_ERROR(x_.Reserve(T * D));
  UM_RETURN_IF_ERROR(xn_.Reserve(T * D));
  UM_RETURN_IF_ERROR(qkv_.Reserve(T * qkv_width));
  UM_RETURN_IF_ERROR(attn_.Reserve(T * attn_width));
  UM_RETURN_IF_ERROR(gate_up_.Reserve(T * 2 * F));
  UM_RETURN_IF_ERROR(act_.Reserve(T * F));
  const int splits = AttentionSplits(T, cfg_.num_key_value_heads, sm_count_, cfg_.max_position_embeddings);
  // Smaller batches use more splits: size the scratch for the largest product tokens · splits.
  long long scratch = 0;
  for (int t = 1; t <= T; t = t < 64 ? t + 1 : t * 2) {
    const int s = AttentionSplits(t, cfg_.num_key_value_heads, sm_count_, cfg_.max_position_embeddings);
    scratch = std::max(scratch, AttentionScratchFloats(t, cfg_.num_attention_heads, cfg_.head_dim, s));
  }
  scratch = std::max(scratch, AttentionScratchFloats(T, cfg_.num_attention_heads, cfg_.head_dim, splits));
  UM_RETURN_IF_ERROR(attn_scratch_.Reserve(static_cast<size_t>(scratch)));
  UM_RETURN_IF_ERROR(attn_counters_.Reserve(AttentionCounterInts(T, cfg_.num_key_value_heads)));
  CUDA_CHECK(cudaMemsetAsync(attn_counters_.get(), 0, sizeof(int32_t) * attn_counters_.size(), main_));
  UM_RETURN_IF_ERROR(final_xn_.Reserve(R * D));
  UM_RETURN_IF_ERROR(logits_.Reserve(static_cast<size_t>(R) * cfg_.vocab_size));
  UM_RETURN_IF_ERROR(host_ids_.Reserve(T));
  UM_RETURN_IF_ERROR(host_kv_.Reserve(T));
  UM_RETURN_IF_ERROR(host_out_rows_.Reserve(R));
  UM_RETURN_IF_ERROR(host_logits_.Reserve(static_cast<size_t>(R) * cfg_.vocab_size));
  if (cfg_.memory) {
    const MemoryConfig& mc = *cfg_.memory;
    const size_t K = mc.SelectionsPerToken();
    const size_t nr = static_cast<size_t>(mc.NumKeys()) * mc.tucker_rank;
    const size_t y_width = static_cast<size_t>(mc.value_expand) * mc.value_dim;
    UM_RETURN_IF_ERROR(host_selections_.Reserve(T * K * mem_layers_.size()));
    for (DeviceMemoryLayer& d : mem_layers_) {
      UM_RETURN_IF_ERROR(d.u.Reserve(T * D));
      UM_RETURN_IF_ERROR(d.q.Reserve(T * 2 * mc.key_dim));
      UM_RETURN_IF_ERROR(d.qn.Reserve(T * 2 * mc.key_dim));
      UM_RETURN_IF_ERROR(d.q_parts.Reserve(T * 2 * 3 * mc.key_dim));
      UM_RETURN_IF_ERROR(d.scores.Reserve(T * 2 * mc.heads * nr));
      UM_RETURN_IF_ERROR(d.rows.Reserve(T * K));
      UM_RETURN_IF_ERROR(d.groups.Reserve(T * K));
      UM_RETURN_IF_ERROR(d.sel_scores.Reserve(T * K * mc.tucker_cores));
      UM_RETURN_IF_ERROR(d.t_index.Reserve(T * K));
      UM_RETURN_IF_ERROR(d.y.Reserve(T * y_width));
      if (!device_pool_) {
        UM_RETURN_IF_ERROR(d.y_f32.Reserve(T * y_width));
        UM_RETURN_IF_ERROR(d.host_rows.Reserve(T * K));
        UM_RETURN_IF_ERROR(d.host_groups.Reserve(T * K));
        UM_RETURN_IF_ERROR(d.host_scores.Reserve(T * K * mc.tucker_cores));
        UM_RETURN_IF_ERROR(d.host_y.Reserve(T * y_width));
      }
    }
  }
  capacity_tokens_ = T;
  capacity_rows_ = R;
  return BuildDecodePhases();
}

absl::Status CudaEngine::EnqueueMemoryQuery(int j, int T, cudaStream_t stream,
                                            cublasHandle_t blas) {
  const MemoryConfig& mc = *cfg_.memory;
  DeviceMemoryLayer& d = mem_layers_[j];
  if (!Ablated("mem.query_proj")) {
    UM_RETURN_IF_ERROR(MatMulBf16(blas, stream, mem_layers_[d.u_owner].u.get(), T, d.query_proj.get(),
                                  2 * mc.key_dim, cfg_.hidden_size, d.q.get(), false));
  }
  Mark("mem.query_proj", stream);
  const int key_rows = static_cast<int>(mc.NumKeys() * mc.tucker_rank);
  if (T <= kMaxGemvTokens) {
    if (!Ablated("mem.key_scores")) {
      LaunchQueryKeyScores(d.q.get(), d.query_norm.get(), mc.norm_eps, d.keys_hat.get(), T, mc.heads, key_rows,
                           mc.key_dim, d.qn.get(), d.scores.get(), stream);
    }
  } else {
    const bool sgemm = KeyScoresBySgemm();
    if (!Ablated("mem.query_norm")) {
      LaunchQueryNorm(d.q.get(), d.query_norm.get(), T, mc.key_dim, mc.norm_eps, d.qn.get(), stream,
                      sgemm ? nullptr : d.q_parts.get());
    }
    Mark("mem.query_norm", stream);
    if (!Ablated("mem.key_scores")) {
      UM_RETURN_IF_ERROR(sgemm ? KeyScoresGemm(blas, d.qn.get(), d.keys_f32.get(), T, mc.heads, key_rows,
                                               mc.key_dim, d.scores.get())
                               : KeyScoresGemmSplit(blas, d.q_parts.get(), d.keys3.get(), T, mc.heads,
                                                    key_rows, mc.key_dim, d.scores.get()));
    }
  }
  Mark("mem.key_scores", stream);
  TopMShape shape;
  shape.tokens = T;
  shape.heads = mc.heads;
  shape.num_keys = static_cast<int>(mc.NumKeys());
  shape.rank = mc.tucker_rank;
  shape.cores = mc.tucker_cores;
  shape.topk = mc.topk;
  shape.num_rows = mc.NumRows();
  if (!Ablated("mem.top_m")) {
    LaunchMemoryTopM(shape, d.scores.get(), d.cores.get(), d.core_u.get(), d.core_v.get(),
                     d.shuffle.get(), d.rows.get(), d.groups.get(), d.sel_scores.get(),
                     d.t_index.get(), stream);
  }
  CUDA_CHECK(cudaGetLastError());
  Mark("mem.top_m", stream);
  // Without the top-m the pool would read unset rows: leaving that out leaves the pool out too.
  if (device_pool_ && !Ablated("mem.pool") && !Ablated("mem.top_m")) {
    LaunchDevicePool(d.values.get(), d.rows.get(), d.groups.get(), d.sel_scores.get(), T,
                     mc.SelectionsPerToken(), mc.value_expand, mc.value_dim, mc.tucker_cores,
                     d.y.get(), stream);
    CUDA_CHECK(cudaGetLastError());
    Mark("mem.pool", stream);
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::Enqueue(int T, int R, bool decode) {
  const int D = cfg_.hidden_size, F = cfg_.intermediate_size;
  const int nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const int qkv_width = (nh + 2 * nkv) * hd;
  const int J = cfg_.NumMemoryLayers();
  const int splits = AttentionSplits(T, nkv, sm_count_, cfg_.max_position_embeddings);
  // A few tokens: the skinny GEMV with RMSNorm fused into its input and SwiGLU into the gate/up
  // product's output. Wider: standalone norm and SwiGLU kernels around cuBLAS.
  const bool skinny = T <= GemvMaxTokens() && D % 8 == 0 && F % 8 == 0 && (nh * hd) % 8 == 0;
  // A few more: the tensor-core skinny kernel, SwiGLU fused into the gate/up product.
  const bool mma = !skinny && T <= kMmaPreferredMaxTokens && D % 32 == 0 && GemmMmaEnabled();
  // Programmatic dependent launch pays where our kernels follow each other; around cuBLAS's
  // GEMMs (wider steps) it measured a few percent slower (H200, batch 64: 954 against 912 us).
  ScopedPdl pdl(T <= kMmaPreferredMaxTokens);
  std::vector<std::unique_ptr<PendingPool>> pending(J);
  absl::Status status;

  Mark("start", main_);
  LaunchEmbed(embed_.get(), ids_.get(), T, D, x_.get(), main_);
  Mark("embed", main_);
  for (int b = 0; b < cfg_.num_layers && status.ok(); ++b) {
    DeviceBlock& bw = blocks_[b];
    if (skinny) {
      GemvArgs qkv = NormedGemv(T, qkv_width, bw.wqkv.get(), bw.attn_norm.get());
      qkv.y = qkv_.get();
      // UM_CUDA_FIRST_PRODUCT_PDL=0 (a measuring knob): the step's first product waits for the
      // embedding to finish instead of launching beside it. The H200 timeline shows a 10 us hole
      // between the two at batch 1 (RESULTS, "A per-kernel timeline"); not yet run on a GPU.
      static EnvKnob first_product_pdl("UM_CUDA_FIRST_PRODUCT_PDL", 1);
      ScopedPdl first(b == 0 && first_product_pdl.Get() == 0 ? false : PdlActive());
      if (!Ablated("qkv")) LaunchGemv(qkv, main_);
    } else {
      LaunchRmsNorm(x_.get(), bw.attn_norm.get(), T, D, cfg_.rms_norm_eps, nullptr, xn_.get(),
                    nullptr, main_);
      Mark("attn_norm", main_);
      if (!Ablated("qkv")) {
        UM_RETURN_IF_ERROR(MatMulBf16(blas_main_, main_, xn_.get(), T, bw.wqkv.get(), qkv_width, D, qkv_.get(), false));
      }
    }
    Mark("qkv", main_);
    if (!decode) LaunchRopeAndCache(qkv_.get(), kv_.get(), rope_.get(), T, nh, nkv, hd, b, main_);
    if (!Ablated("attention")) {
      LaunchAttention(qkv_.get(), kv_.get(), decode ? rope_.get() : nullptr, T, nh, nkv, hd, b,
                      splits, attn_scratch_.get(), attn_counters_.get(), attn_.get(), main_);
    }
    CUDA_CHECK(cudaGetLastError());
    Mark("attention", main_);
    if (!Ablated("wo")) {
      UM_RETURN_IF_ERROR(MatMulBf16(blas_main_, main_, attn_.get(), T, bw.wo.get(), D, nh * hd, x_.get(), true));
    }
    Mark("wo", main_);

    // u_b (the memory layers reading block b share one copy), then the gate/up product.
    int first_reader = -1;
    for (int j = 0; j < J; ++j) {
      if (mem_layers_[j].input_block == b) {
        first_reader = j;
        break;
      }
    }
    bf16* u = first_reader >= 0 ? mem_layers_[first_reader].u.get() : nullptr;
    if (skinny) {
      GemvArgs gu = NormedGemv(T, F, bw.w_gate_up.get(), bw.ffn_norm.get());
      gu.normed_out = u;
      gu.output = GemvOutput::kSwiGlu;
      gu.act = act_.get();
      if (!Ablated("gate_up")) LaunchGemv(gu, main_);
    } else {
      LaunchRmsNorm(x_.get(), bw.ffn_norm.get(), T, D, cfg_.rms_norm_eps, nullptr, xn_.get(), u,
                    main_);
      Mark("ffn_norm", main_);
      if (mma) {
        GemvArgs gu;
        gu.tokens = T;
        gu.out_dim = F;
        gu.in_dim = D;
        gu.w = bw.w_gate_up.get();
        gu.x = xn_.get();
        gu.output = GemvOutput::kSwiGlu;
        gu.act = act_.get();
        if (!Ablated("gate_up")) LaunchGemmMma(gu, main_);
      } else {
        if (!Ablated("gate_up")) {
          UM_RETURN_IF_ERROR(MatMulBf16(blas_main_, main_, xn_.get(), T, bw.w_gate_up.get(), 2 * F, D, gate_up_.get(), false));
        }
        Mark("gate_up", main_);
        LaunchSwiGlu(gate_up_.get(), T, F, act_.get(), main_);
        Mark("swiglu", main_);
      }
    }
    if (skinny || mma) Mark("gate_up", main_);
    CUDA_CHECK(cudaGetLastError());
    for (int j = first_reader; j >= 0 && j < J; ++j) {
      if (mem_layers_[j].input_block == b && !AblatedForLayer("memory", j)) UM_RETURN_IF_ERROR(ForkMemoryLayer(j, T, &pending));
    }

    if (!Ablated("down")) {
      UM_RETURN_IF_ERROR(MatMulBf16(blas_main_, main_, act_.get(), T, bw.w_down.get(), D, F, x_.get(), true));
    }
    Mark("down", main_);

    for (int j = 0; j < J && status.ok(); ++j) {
      DeviceMemoryLayer& d = mem_layers_[j];
      if (d.output_block != b || AblatedForLayer("memory", j)) continue;
      if (!(device_pool_ && Ablated("mem.join"))) status = JoinMemoryLayer(j, T, &pending);
      if (!status.ok()) break;
      Mark("memory_join_wait", main_);
      const MemoryConfig& mc = *cfg_.memory;
      if (!Ablated("values_proj")) {
        UM_RETURN_IF_ERROR(MatMulBf16(blas_main_, main_, d.y.get(), T, d.values_proj.get(), D,
                                      mc.value_expand * mc.value_dim, x_.get(), true));
      }
      Mark("values_proj", main_);
    }
  }
  for (auto& p : pending) {
    if (p) p->Wait().IgnoreError();
  }
  UM_RETURN_IF_ERROR(status);
  if (device_pool_ && Ablated("mem.join")) {
    for (int j = 0; j < J; ++j) {
      if (!AblatedForLayer("memory", j)) UM_RETURN_IF_ERROR(JoinMemoryLayer(j, T, &pending));
    }
  }
  return EnqueueLogits(R);
}

absl::Status CudaEngine::ForkMemoryLayer(int j, int T,
                                         std::vector<std::unique_ptr<PendingPool>>* pending) {
  DeviceMemoryLayer& d = mem_layers_[j];
  if (device_pool_ && AblatedForLayer("mem.overlap", j)) return EnqueueMemoryQuery(j, T, main_, blas_main_);
  if (device_pool_) {
    CUDA_CHECK(cudaEventRecord(d.fork, main_));
    CUDA_CHECK(cudaStreamWaitEvent(mem_, d.fork, 0));
    Mark("fork", mem_);
    // The side chain without programmatic dependent launch: its kernels then take multiprocessor
    // resources only once their inputs are ready, not while they wait beside the main stream's
    // (H200, batch 1: 295 -> 288 us a step; batch 64, where PDL is off anyway, unchanged).
    // (Keeping PDL for the one-block chain of the last layer: 287.9 -> 286.7, noise; for every
    // chain of up to two blocks 293.7.)
    ScopedPdl pdl(false);
    UM_RETURN_IF_ERROR(EnqueueMemoryQuery(j, T, mem_, blas_mem_));
    CUDA_CHECK(cudaEventRecord(d.join, mem_));
    return absl::OkStatus();
  }
  // Host pooling: selections to pinned memory, then the RowPooler keeps the lookup in flight
  // while the next blocks run.
  const MemoryConfig& mc = *cfg_.memory;
  const int K = mc.SelectionsPerToken();
  UM_RETURN_IF_ERROR(EnqueueMemoryQuery(j, T, main_, blas_main_));
  CUDA_CHECK(cudaMemcpyAsync(d.host_rows.get(), d.rows.get(), sizeof(int64_t) * T * K,
                             cudaMemcpyDeviceToHost, main_));
  CUDA_CHECK(cudaMemcpyAsync(d.host_groups.get(), d.groups.get(), sizeof(int32_t) * T * K,
                             cudaMemcpyDeviceToHost, main_));
  CUDA_CHECK(cudaMemcpyAsync(d.host_scores.get(), d.sel_scores.get(),
                             sizeof(float) * T * K * mc.tucker_cores, cudaMemcpyDeviceToHost, main_));
  CUDA_CHECK(cudaStreamSynchronize(main_));
  PoolRequest req;
  req.layer = j;
  req.num_tokens = T;
  req.selections = K;
  req.rows = d.host_rows.get();
  req.groups = d.host_groups.get();
  req.scores = d.host_scores.get();
  req.out = d.host_y.get();
  (*pending)[j] = pooler_->Start(req);
  return absl::OkStatus();
}

absl::Status CudaEngine::JoinMemoryLayer(int j, int T,
                                         std::vector<std::unique_ptr<PendingPool>>* pending) {
  DeviceMemoryLayer& d = mem_layers_[j];
  if (device_pool_ && AblatedForLayer("mem.overlap", j)) return absl::OkStatus();
  if (device_pool_) {
    CUDA_CHECK(cudaStreamWaitEvent(main_, d.join, 0));
    return absl::OkStatus();
  }
  const MemoryConfig& mc = *cfg_.memory;
  const int y_width = mc.value_expand * mc.value_dim;
  absl::Status st = (*pending)[j]->Wait();
  (*pending)[j].reset();
  UM_RETURN_IF_ERROR(st);
  CUDA_CHECK(cudaMemcpyAsync(d.y_f32.get(), d.host_y.get(), sizeof(float) * T * y_width,
                             cudaMemcpyHostToDevice, main_));
  LaunchToBf16(d.y_f32.get(), static_cast<int64_t>(T) * y_width, d.y.get(), main_);
  CUDA_CHECK(cudaGetLastError());
  return absl::OkStatus();
}

GemvArgs CudaEngine::NormedGemv(int tokens, int out_dim, const bf16* w, const float* norm_weight) const {
  GemvArgs a;
  a.tokens = tokens;
  a.out_dim = out_dim;
  a.in_dim = cfg_.hidden_size;
  a.w = w;
  a.x_f32 = x_.get();
  a.norm_weight = norm_weight;
  a.eps = cfg_.rms_norm_eps;
  return a;
}

absl::Status CudaEngine::EnqueueLogits(int R) {
  const int D = cfg_.hidden_size;
  const bf16* head = lm_head_.size() > 0 ? lm_head_.get() : embed_.get();
  if (R <= GemvMaxTokens() && D % 8 == 0) {
    GemvArgs lm = NormedGemv(R, cfg_.vocab_size, head, final_norm_.get());
    lm.rows = out_rows_.get();
    lm.y = logits_.get();
    if (!Ablated("lm_head")) LaunchGemv(lm, main_);
    CUDA_CHECK(cudaGetLastError());
    Mark("lm_head", main_);
    return absl::OkStatus();
  }
  LaunchRmsNorm(x_.get(), final_norm_.get(), R, D, cfg_.rms_norm_eps, out_rows_.get(),
                final_xn_.get(), nullptr, main_);
  CUDA_CHECK(cudaGetLastError());
  if (!Ablated("lm_head")) {
    UM_RETURN_IF_ERROR(MatMulBf16(blas_main_, main_, final_xn_.get(), R, head, cfg_.vocab_size, D, logits_.get(), false));
  }
  Mark("lm_head", main_);
  return absl::OkStatus();
}

// Runs the step whose inputs are on the device: from a graph (captured on first use for this
// batch size) when `graph`, else eagerly.
absl::Status CudaEngine::EnqueueStep(int T, int R, bool decode, bool graph) {
  const bool kernel = UseDecodeKernel(T, decode);
  auto enqueue = [&] { return kernel ? EnqueueDecodeKernel(T, R) : Enqueue(T, R, decode); };
  if (!graph) return enqueue();
  const int key = 2 * T + (kernel ? 1 : 0);
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    CUDA_CHECK(cudaStreamBeginCapture(main_, cudaStreamCaptureModeThreadLocal));
    absl::Status captured = enqueue();
    cudaGraph_t g = nullptr;
    const cudaError_t end = cudaStreamEndCapture(main_, &g);
    if (!captured.ok()) {
      if (g) cudaGraphDestroy(g);
      return captured;
    }
    CUDA_CHECK(end);
    Graph entry;
    const cudaError_t inst = cudaGraphInstantiate(&entry.exec, g, 0);
    cudaGraphDestroy(g);
    CUDA_CHECK(inst);
    it = graphs_.emplace(key, entry).first;
  }
  CUDA_CHECK(cudaGraphLaunch(it->second.exec, main_));
  return absl::OkStatus();
}

absl::Status CudaEngine::Forward(absl::Span<const SequenceInput> batch,
                                 const ForwardOptions& options, ForwardOutput* out) {
  const int64_t V = cfg_.vocab_size;
  std::vector<CudaSequence*> seqs;
  int64_t T = 0;
  bool decode = true;
  UM_RETURN_IF_ERROR(ValidateBatch(batch, cfg_));
  for (const SequenceInput& in : batch) {
    seqs.push_back(static_cast<CudaSequence*>(in.sequence));
    T += static_cast<int64_t>(in.tokens.size());
    decode = decode && in.tokens.size() == 1;
  }
  for (size_t b = 0; b < batch.size(); ++b) {
    UM_RETURN_IF_ERROR(seqs[b]->Reserve(seqs[b]->length() + static_cast<int64_t>(batch[b].tokens.size()), main_));
  }
  std::vector<int32_t> out_rows;
  int64_t offset = 0;
  for (const SequenceInput& in : batch) {
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    if (in.all_logits) {
      for (int64_t i = 0; i < n; ++i) out_rows.push_back(static_cast<int32_t>(offset + i));
    } else {
      out_rows.push_back(static_cast<int32_t>(offset + n - 1));
    }
    offset += n;
  }
  const int R = static_cast<int>(out_rows.size());
  UM_RETURN_IF_ERROR(EnsureCapacity(static_cast<int>(T), R));
  int64_t t = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    for (size_t i = 0; i < batch[b].tokens.size(); ++i, ++t) {
      host_ids_.get()[t] = batch[b].tokens[i];
      host_kv_.get()[t] = seqs[b]->Token(seqs[b]->length() + static_cast<int64_t>(i));
    }
  }
  std::copy(out_rows.begin(), out_rows.end(), host_out_rows_.get());
  CUDA_CHECK(cudaMemcpyAsync(ids_.get(), host_ids_.get(), sizeof(int32_t) * T, cudaMemcpyHostToDevice, main_));
  CUDA_CHECK(cudaMemcpyAsync(kv_.get(), host_kv_.get(), sizeof(TokenKv) * T, cudaMemcpyHostToDevice, main_));
  CUDA_CHECK(cudaMemcpyAsync(out_rows_.get(), host_out_rows_.get(), sizeof(int32_t) * R, cudaMemcpyHostToDevice, main_));

  // Graphs for decode steps with every logit row (all R == T) and device pooling.
  const bool graph = options_.cuda_graphs && decode && (device_pool_ || cfg_.NumMemoryLayers() == 0);
  absl::Status status = EnqueueStep(static_cast<int>(T), R, decode, graph);
  if (!status.ok()) {
    cudaStreamSynchronize(main_);
    cudaStreamSynchronize(mem_);
    return status;
  }
  last_tokens_ = static_cast<int>(T);
  last_rows_ = R;
  last_decode_ = decode;
  last_graph_ = graph;
  CUDA_CHECK(cudaMemcpyAsync(host_logits_.get(), logits_.get(), sizeof(float) * R * V,
                             cudaMemcpyDeviceToHost, main_));
  const int J = cfg_.NumMemoryLayers();
  const int64_t K = J > 0 ? cfg_.memory->SelectionsPerToken() : 0;
  if (options.record_selections && J > 0) {
    for (int j = 0; j < J; ++j) {
      CUDA_CHECK(cudaMemcpyAsync(host_selections_.get() + j * T * K, mem_layers_[j].t_index.get(),
                                 sizeof(int64_t) * T * K, cudaMemcpyDeviceToHost, main_));
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(main_));
  out->rows = R;
  out->logits.assign(host_logits_.get(), host_logits_.get() + static_cast<size_t>(R) * V);
  if (options.record_selections && J > 0) {
    out->selections.assign(host_selections_.get(), host_selections_.get() + J * T * K);
  } else {
    out->selections.clear();
  }
  for (size_t b = 0; b < batch.size(); ++b) {
    seqs[b]->SetLength(seqs[b]->length() + static_cast<int64_t>(batch[b].tokens.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> CudaEngine::ReplayLastStep(int iterations, bool graph) {
  if (last_tokens_ == 0) return absl::FailedPreconditionError("no step to replay");
  if (graph && !last_graph_) return absl::FailedPreconditionError("the last step had no graph");
  if (!device_pool_ && cfg_.NumMemoryLayers() > 0) {
    return absl::FailedPreconditionError("replay needs device pooling");
  }
  // Replays append the same K/V again at the same positions: the cache is left as it was.
  for (int i = 0; i < 3; ++i) UM_RETURN_IF_ERROR(EnqueueStep(last_tokens_, last_rows_, last_decode_, graph));
  CUDA_CHECK(cudaEventRecord(start_, main_));
  for (int i = 0; i < iterations; ++i) UM_RETURN_IF_ERROR(EnqueueStep(last_tokens_, last_rows_, last_decode_, graph));
  CUDA_CHECK(cudaEventRecord(stop_, main_));
  CUDA_CHECK(cudaEventSynchronize(stop_));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
  if (decode_trace_.size() > 0 && UseDecodeKernel(last_tokens_, last_decode_)) PrintDecodeTrace();
  const char* profile = std::getenv("UM_CUDA_PROFILE");
  if (!graph && profile != nullptr && std::strcmp(profile, "1") == 0 && !UseDecodeKernel(last_tokens_, last_decode_)) {
    profiling_ = true;
    marks_main_.clear();
    marks_mem_.clear();
    const absl::Status st = EnqueueStep(last_tokens_, last_rows_, last_decode_, false);
    profiling_ = false;
    UM_RETURN_IF_ERROR(st);
    CUDA_CHECK(cudaStreamSynchronize(main_));
    PrintOpProfile();
  }
  return 1000.0 * ms / iterations;
}

}  // namespace cuda

absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(std::shared_ptr<const ModelWeights> weights,
                                                         RowPooler* pooler,
                                                         const EngineOptions& options) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda backend: no usable CUDA device (", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices", ")"));
  }
  auto engine = std::make_unique<cuda::CudaEngine>(std::move(weights), pooler, options);
  UM_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<Engine>(std::move(engine));
}

absl::StatusOr<double> CudaReplayLastStepMicros(Engine* engine, int iterations, bool graph) {
  auto* cuda_engine = dynamic_cast<cuda::CudaEngine*>(engine);
  if (cuda_engine == nullptr) return absl::InvalidArgumentError("not a CUDA engine");
  return cuda_engine->ReplayLastStep(iterations, graph);
}

absl::StatusOr<double> CudaCopyBandwidth(size_t bytes) {
  cuda::DeviceBuffer<uint8_t> a, b;
  UM_RETURN_IF_ERROR(a.Reserve(bytes));
  UM_RETURN_IF_ERROR(b.Reserve(bytes));
  CUDA_CHECK(cudaMemset(a.get(), 1, bytes));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) CUDA_CHECK(cudaMemcpy(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice));
  constexpr int kIters = 20;
  CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < kIters; ++i) {
    CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a.get() : b.get(), i % 2 ? b.get() : a.get(), bytes,
                               cudaMemcpyDeviceToDevice));
  }
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * static_cast<double>(bytes) * kIters / (ms * 1e-3);
}

}  // namespace ultramem
