// Implementation of the CPU engine: MODEL.md §2 (dense blocks) with the memory layers of §3
// issued right after their input block and awaited only after their output block.
#include "compute_node/cpu/cpu_engine.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "compute_node/cpu/kernels.h"
#include "compute_node/cpu/memory_select.h"
#include "compute_node/cpu/thread_pool.h"

namespace ultramem {
namespace {

// KV cache of one sequence: per block, K and V as [position][n_kv·hd], grown in steps.
class CpuSequence : public Sequence {
 public:
  CpuSequence(int num_layers, int64_t kv_width) : k_(num_layers), v_(num_layers), width_(kv_width) {}

  void Reserve(int64_t positions) {
    if (positions <= capacity_) return;
    int64_t cap = std::max<int64_t>(positions, std::max<int64_t>(64, capacity_ * 2));
    for (auto& k : k_) k.resize(cap * width_);
    for (auto& v : v_) v.resize(cap * width_);
    capacity_ = cap;
  }
  float* K(int layer, int64_t pos) { return k_[layer].data() + pos * width_; }
  float* V(int layer, int64_t pos) { return v_[layer].data() + pos * width_; }
  void SetLength(int64_t n) { length_ = n; }
  int64_t CacheBytes() const override {
    return 2 * static_cast<int64_t>(k_.size()) * capacity_ * width_ * sizeof(float);
  }

 private:
  std::vector<std::vector<float>> k_, v_;
  int64_t width_;
  int64_t capacity_ = 0;
};

}  // namespace

class CpuEngine : public Engine {
 public:
  CpuEngine(std::shared_ptr<const ModelWeights> weights, RowPooler* pooler, int threads)
      : w_(std::move(weights)), cfg_(w_->config), pooler_(pooler), pool_(threads) {}

  const ModelConfig& config() const override { return cfg_; }

  std::unique_ptr<Sequence> NewSequence() override {
    return std::make_unique<CpuSequence>(cfg_.num_layers,
                                         static_cast<int64_t>(cfg_.num_key_value_heads) * cfg_.head_dim);
  }

  absl::Status Forward(absl::Span<const SequenceInput> batch, const ForwardOptions& options,
                       ForwardOutput* out) override;

 private:
  // Runs attention for every (token, head); KV of the new tokens are already in the caches.
  void Attention(const std::vector<CpuSequence*>& seq_of, const std::vector<int64_t>& pos,
                 const float* qkv, int layer, float* attn_out);

  std::shared_ptr<const ModelWeights> w_;
  const ModelConfig& cfg_;
  RowPooler* pooler_;
  ThreadPool pool_;
  // Reused buffers (Forward is not reentrant: one caller at a time).
  std::vector<float> x_, xn_, qkv_, attn_, gate_up_, act_, select_scratch_;
};

void CpuEngine::Attention(const std::vector<CpuSequence*>& seq_of, const std::vector<int64_t>& pos,
                          const float* qkv, int layer, float* attn_out) {
  const int nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const int64_t qkv_width = static_cast<int64_t>(nh + 2 * nkv) * hd;
  const int group = nh / nkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t tokens = static_cast<int64_t>(pos.size());
  pool_.ParallelFor(tokens * nh, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / nh;
      const int head = static_cast<int>(i % nh);
      const int kvh = head / group;
      CpuSequence* seq = seq_of[t];
      const float* q = qkv + t * qkv_width + static_cast<int64_t>(head) * hd;
      const int64_t n = pos[t] + 1;
      scores.resize(n);
      float max_score = -INFINITY;
      for (int64_t p = 0; p < n; ++p) {
        scores[p] = Dot(q, seq->K(layer, p) + kvh * hd, hd) * scale;
        max_score = std::max(max_score, scores[p]);
      }
      float sum = 0.0f;
      for (int64_t p = 0; p < n; ++p) {
        scores[p] = std::exp(scores[p] - max_score);
        sum += scores[p];
      }
      float* o = attn_out + t * nh * hd + static_cast<int64_t>(head) * hd;
      std::fill(o, o + hd, 0.0f);
      const float inv = 1.0f / sum;
      for (int64_t p = 0; p < n; ++p) Axpy(scores[p] * inv, seq->V(layer, p) + kvh * hd, o, hd);
    }
  });
}

absl::Status CpuEngine::Forward(absl::Span<const SequenceInput> batch,
                                const ForwardOptions& options, ForwardOutput* out) {
  const int64_t D = cfg_.hidden_size, V = cfg_.vocab_size, F = cfg_.intermediate_size;
  const int nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const int64_t qkv_width = static_cast<int64_t>(nh + 2 * nkv) * hd;

  // Validate everything before touching any state.
  UM_RETURN_IF_ERROR(ValidateBatch(batch, cfg_));
  std::vector<CpuSequence*> seq_of;
  std::vector<int64_t> pos;
  std::vector<int32_t> token_ids;
  for (const SequenceInput& in : batch) {
    auto* seq = static_cast<CpuSequence*>(in.sequence);
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      seq_of.push_back(seq);
      pos.push_back(seq->length() + static_cast<int64_t>(i));
      token_ids.push_back(in.tokens[i]);
    }
  }
  const int64_t T = static_cast<int64_t>(token_ids.size());
  for (size_t b = 0; b < batch.size(); ++b) {
    auto* seq = static_cast<CpuSequence*>(batch[b].sequence);
    seq->Reserve(seq->length() + static_cast<int64_t>(batch[b].tokens.size()));
  }

  x_.resize(T * D);
  xn_.resize(T * D);
  qkv_.resize(T * qkv_width);
  attn_.resize(T * nh * hd);
  gate_up_.resize(T * 2 * F);
  act_.resize(T * F);
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(w_->embed_tokens.data() + static_cast<int64_t>(token_ids[t]) * D, D, x_.data() + t * D);
  }

  // Memory-layer state: selections, pooled output and the lookup in flight, per layer.
  const int J = cfg_.NumMemoryLayers();
  std::vector<Selections> sel(J);
  std::vector<std::vector<float>> pooled(J);
  std::vector<std::unique_ptr<PendingPool>> pending(J);
  absl::Status status;

  for (int b = 0; b < cfg_.num_layers && status.ok(); ++b) {
    const BlockWeights& bw = w_->blocks[b];
    // Attention.
    for (int64_t t = 0; t < T; ++t) {
      RmsNorm(x_.data() + t * D, bw.attn_norm.data(), D, cfg_.rms_norm_eps, xn_.data() + t * D);
    }
    MatMulWT(pool_, xn_.data(), T, bw.wqkv.data(), qkv_width, D, qkv_.data());
    for (int64_t t = 0; t < T; ++t) {
      float* row = qkv_.data() + t * qkv_width;
      for (int h = 0; h < nh + nkv; ++h) ApplyRope(row + h * hd, hd, pos[t], w_->rope_inv_freq.data());
      std::copy_n(row + nh * hd, nkv * hd, seq_of[t]->K(b, pos[t]));
      std::copy_n(row + (nh + nkv) * hd, nkv * hd, seq_of[t]->V(b, pos[t]));
    }
    Attention(seq_of, pos, qkv_.data(), b, attn_.data());
    MatMulWT(pool_, attn_.data(), T, bw.wo.data(), D, nh * hd, x_.data(), /*accumulate=*/true);

    // u_b, then the lookups of every memory layer that reads block b go in flight.
    for (int64_t t = 0; t < T; ++t) {
      RmsNorm(x_.data() + t * D, bw.ffn_norm.data(), D, cfg_.rms_norm_eps, xn_.data() + t * D);
    }
    for (int j = 0; j < J; ++j) {
      const MemoryLayerWeights& mw = w_->memory[j];
      if (mw.input_block != b) continue;
      const MemoryConfig& mc = *cfg_.memory;
      SelectRows(pool_, mc, mw, xn_.data(), T, D, &select_scratch_, &sel[j]);
      pooled[j].resize(T * mc.value_expand * mc.value_dim);
      PoolRequest req;
      req.layer = j;
      req.num_tokens = static_cast<int>(T);
      req.selections = mc.SelectionsPerToken();
      req.rows = sel[j].rows.data();
      req.groups = sel[j].groups.data();
      req.scores = sel[j].scores.data();
      req.out = pooled[j].data();
      pending[j] = pooler_->Start(req);
    }

    // SwiGLU FFN.
    MatMulWT(pool_, xn_.data(), T, bw.w_gate_up.data(), 2 * F, D, gate_up_.data());
    for (int64_t t = 0; t < T; ++t) {
      float* gu = gate_up_.data() + t * 2 * F;
      SiluMul(gu, gu + F, F);
      std::copy_n(gu, F, act_.data() + t * F);
    }
    MatMulWT(pool_, act_.data(), T, bw.w_down.data(), D, F, x_.data(), /*accumulate=*/true);

    // Memory layers that end here, in order of j.
    for (int j = 0; j < J; ++j) {
      const MemoryLayerWeights& mw = w_->memory[j];
      if (mw.output_block != b) continue;
      absl::Status st = pending[j]->Wait();
      pending[j].reset();
      if (!st.ok()) {
        status = st;
        break;
      }
      const MemoryConfig& mc = *cfg_.memory;
      MatMulWT(pool_, pooled[j].data(), T, mw.values_proj.data(), D,
               static_cast<int64_t>(mc.value_expand) * mc.value_dim, x_.data(), /*accumulate=*/true);
    }
  }
  // Lookups still in flight after an error are awaited so their buffers outlive them.
  for (auto& p : pending) {
    if (p) p->Wait().IgnoreError();
  }
  if (!status.ok()) return status;

  // Final norm and logits for the requested rows.
  std::vector<int64_t> rows;
  int64_t offset = 0;
  for (const SequenceInput& in : batch) {
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    if (in.all_logits) {
      for (int64_t i = 0; i < n; ++i) rows.push_back(offset + i);
    } else {
      rows.push_back(offset + n - 1);
    }
    offset += n;
  }
  const int64_t R = static_cast<int64_t>(rows.size());
  for (int64_t i = 0; i < R; ++i) {
    RmsNorm(x_.data() + rows[i] * D, w_->final_norm.data(), D, cfg_.rms_norm_eps, xn_.data() + i * D);
  }
  out->rows = R;
  out->logits.resize(R * V);
  MatMulWT(pool_, xn_.data(), R, w_->LmHead(), V, D, out->logits.data());

  if (options.record_selections && J > 0) {
    const int64_t K = cfg_.memory->SelectionsPerToken();
    out->selections.resize(J * T * K);
    for (int j = 0; j < J; ++j) std::copy_n(sel[j].t_index.data(), T * K, out->selections.data() + j * T * K);
  } else {
    out->selections.clear();
  }
  for (const SequenceInput& in : batch) {
    auto* seq = static_cast<CpuSequence*>(in.sequence);
    seq->SetLength(seq->length() + static_cast<int64_t>(in.tokens.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Engine>> CreateCpuEngine(std::shared_ptr<const ModelWeights> weights,
                                                        RowPooler* pooler,
                                                        const EngineOptions& options) {
  // OpenBLAS runs single-threaded: the engine splits each product across its own pool, so the
  // two never compete for the same cores.
  openblas_set_num_threads(1);
  return std::unique_ptr<Engine>(new CpuEngine(std::move(weights), pooler, options.num_threads));
}

}  // namespace ultramem
