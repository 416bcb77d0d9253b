// Implementation of compute_node/model_weights.h.
#include "compute_node/model_weights.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace ultramem {
namespace {

// Appends the named tensor's float32 values to `out`.
absl::Status Append(const Checkpoint& ckpt, const std::string& name, std::vector<float>* out) {
  UM_ASSIGN_OR_RETURN(std::vector<float> v, ckpt.ReadF32(name));
  out->insert(out->end(), v.begin(), v.end());
  return absl::OkStatus();
}

absl::Status LoadMemoryLayer(const Checkpoint& ckpt, int j, MemoryLayerWeights* m) {
  const ModelConfig& cfg = ckpt.config();
  const MemoryConfig& mc = *cfg.memory;
  const std::string p = absl::StrCat("memory.", j, ".");
  m->input_block = mc.layers[j].first;
  m->output_block = mc.layers[j].second;
  UM_RETURN_IF_ERROR(Append(ckpt, p + "query_proj.weight", &m->query_proj));
  UM_RETURN_IF_ERROR(Append(ckpt, p + "query_norm.weight", &m->query_norm));
  std::vector<float> keys_norm;
  UM_RETURN_IF_ERROR(Append(ckpt, p + "keys_norm.weight", &keys_norm));
  UM_ASSIGN_OR_RETURN(std::vector<float> keys, ckpt.ReadF32(p + "keys"));

  const int64_t heads = mc.heads, n = mc.NumKeys(), dk = mc.key_dim, r = mc.tucker_rank;
  m->keys_hat.assign(heads * 2 * n * r * dk, 0.0f);
  std::vector<float> column(dk);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t side = 0; side < 2; ++side) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t a = 0; a < r; ++a) {
          // keys[h, side, i, :, a] is strided by r in the stored [H,2,n,Dk,r] layout.
          const float* src = keys.data() + (((h * 2 + side) * n + i) * dk) * r + a;
          double sum = 0.0;
          for (int64_t d = 0; d < dk; ++d) sum += static_cast<double>(src[d * r]) * src[d * r];
          const float scale = 1.0f / std::sqrt(static_cast<float>(sum / dk) + mc.norm_eps);
          float* dst = m->keys_hat.data() + (((h * 2 + side) * n + i) * r + a) * dk;
          for (int64_t d = 0; d < dk; ++d) dst[d] = src[d * r] * scale * keys_norm[d];
        }
      }
    }
  }
  // Cores: the checkpoint holds tucker_core.{c} as [H, r, r]; regroup to [H][c][r][r].
  std::vector<std::vector<float>> per_core(mc.tucker_cores);
  for (int c = 0; c < mc.tucker_cores; ++c) {
    UM_ASSIGN_OR_RETURN(per_core[c], ckpt.ReadF32(absl::StrCat(p, "tucker_core.", c)));
  }
  m->cores.resize(heads * mc.tucker_cores * r * r);
  for (int64_t h = 0; h < heads; ++h)
    for (int c = 0; c < mc.tucker_cores; ++c)
      for (int64_t e = 0; e < r * r; ++e)
        m->cores[(h * mc.tucker_cores + c) * r * r + e] = per_core[c][h * r * r + e];
  UM_RETURN_IF_ERROR(Append(ckpt, p + "tucker_core_u", &m->core_u));
  UM_RETURN_IF_ERROR(Append(ckpt, p + "tucker_core_v", &m->core_v));
  UM_RETURN_IF_ERROR(Append(ckpt, p + "values_proj.weight", &m->values_proj));
  UM_ASSIGN_OR_RETURN(m->shuffle_index, ckpt.ReadI64(p + "shuffle_index"));
  return absl::OkStatus();
}

}  // namespace

int64_t ModelWeights::DenseBytesPerToken() const {
  int64_t floats = static_cast<int64_t>(final_norm.size()) +
                   static_cast<int64_t>(config.vocab_size) * config.hidden_size;
  for (const BlockWeights& b : blocks) {
    floats += b.attn_norm.size() + b.wqkv.size() + b.wo.size() + b.ffn_norm.size() +
              b.w_gate_up.size() + b.w_down.size();
  }
  for (const MemoryLayerWeights& m : memory) {
    floats += m.query_proj.size() + m.keys_hat.size() + m.values_proj.size();
  }
  return floats * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<std::shared_ptr<const ModelWeights>> LoadModelWeights(const Checkpoint& ckpt) {
  auto w = std::make_shared<ModelWeights>();
  w->config = ckpt.config();
  const ModelConfig& cfg = w->config;
  UM_RETURN_IF_ERROR(Append(ckpt, "embed_tokens.weight", &w->embed_tokens));
  if (!cfg.tie_word_embeddings) UM_RETURN_IF_ERROR(Append(ckpt, "lm_head.weight", &w->lm_head));
  UM_RETURN_IF_ERROR(Append(ckpt, "final_norm.weight", &w->final_norm));
  w->blocks.resize(cfg.num_layers);
  for (int b = 0; b < cfg.num_layers; ++b) {
    const std::string p = absl::StrCat("layers.", b, ".");
    BlockWeights& bw = w->blocks[b];
    UM_RETURN_IF_ERROR(Append(ckpt, p + "attn_norm.weight", &bw.attn_norm));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "attn.q_proj.weight", &bw.wqkv));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "attn.k_proj.weight", &bw.wqkv));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "attn.v_proj.weight", &bw.wqkv));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "attn.o_proj.weight", &bw.wo));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "ffn_norm.weight", &bw.ffn_norm));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "ffn.gate_proj.weight", &bw.w_gate_up));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "ffn.up_proj.weight", &bw.w_gate_up));
    UM_RETURN_IF_ERROR(Append(ckpt, p + "ffn.down_proj.weight", &bw.w_down));
  }
  w->memory.resize(cfg.NumMemoryLayers());
  for (int j = 0; j < cfg.NumMemoryLayers(); ++j) {
    UM_RETURN_IF_ERROR(LoadMemoryLayer(ckpt, j, &w->memory[j]));
  }
  const int half = cfg.head_dim / 2;
  w->rope_inv_freq.resize(half);
  for (int i = 0; i < half; ++i) {
    w->rope_inv_freq[i] = static_cast<float>(
        std::pow(static_cast<double>(cfg.rope_theta), -2.0 * i / cfg.head_dim));
  }
  return std::shared_ptr<const ModelWeights>(std::move(w));
}

}  // namespace ultramem
