// Implementation of common/model_config.h: config.json parsing and validation, and the tensor table
// of MODEL.md §4.
#include "common/model_config.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/absl_compat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace ultramem {
namespace {

using Json = nlohmann::json;

// Reads typed keys out of one JSON object; every error names the file and the dotted key.
class KeyReader {
 public:
  KeyReader(const Json& object, std::string_view file_name, std::string prefix)
      : object_(object), file_name_(file_name), prefix_(std::move(prefix)) {}

  absl::Status Error(std::string_view key, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(file_name_), ": key \"", prefix_, ToAbsl(key), "\": ", ToAbsl(what)));
  }

  // nullptr when absent.
  const Json* Find(std::string_view key) const {
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  // An integer in [min, max]. When absent: `*out` unchanged if !required, else an error.
  template <typename T>
  absl::Status Int(std::string_view key, bool required, int64_t min, int64_t max, T* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "missing") : absl::OkStatus();
    if (!v->is_number_integer()) return Error(key, "not an integer");
    int64_t value;
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(max)) return Error(key, absl::StrCat(u, " exceeds ", max));
      value = static_cast<int64_t>(u);
    } else {
      value = v->get<int64_t>();
    }
    if (value < min || value > max) {
      return Error(key, absl::StrCat(value, " is outside [", min, ", ", max, "]"));
    }
    *out = static_cast<T>(value);
    return absl::OkStatus();
  }

  // A positive finite number (integers accepted).
  absl::Status PositiveFloat(std::string_view key, bool required, float* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "missing") : absl::OkStatus();
    if (!v->is_number()) return Error(key, "not a number");
    const double d = v->get<double>();
    if (!(d > 0) || !std::isfinite(static_cast<float>(d))) {
      return Error(key, absl::StrCat(d, " is not a positive finite float"));
    }
    *out = static_cast<float>(d);
    return absl::OkStatus();
  }

  absl::Status Bool(std::string_view key, bool required, bool* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "missing") : absl::OkStatus();
    if (!v->is_boolean()) return Error(key, "not a boolean");
    *out = v->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(std::string_view key, bool required, std::string* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "missing") : absl::OkStatus();
    if (!v->is_string()) return Error(key, "not a string");
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

 private:
  const Json& object_;
  std::string_view file_name_;
  std::string prefix_;
};

constexpr int64_t kMaxInt = std::numeric_limits<int>::max();

absl::StatusOr<MemoryConfig> ParseMemory(const Json& object, int num_layers,
                                         std::string_view file_name) {
  KeyReader r(object, file_name, "memory.");
  MemoryConfig m;
  const Json* layers = r.Find("layers");
  if (layers == nullptr) return r.Error("layers", "missing");
  if (!layers->is_array() || layers->empty()) {
    return r.Error("layers", "not a non-empty list of [input_block, output_block] pairs");
  }
  for (size_t j = 0; j < layers->size(); ++j) {
    const Json& pair = (*layers)[j];
    const std::string key = absl::StrCat("layers[", j, "]");
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer() ||
        !pair[1].is_number_integer()) {
      return r.Error(key, "not a pair of integers [input_block, output_block]");
    }
    const int64_t in = pair[0].get<int64_t>(), out = pair[1].get<int64_t>();
    if (in < 0 || out >= num_layers || in > out) {
      return r.Error(key, absl::StrCat("span [", in, ", ", out,
                                       "] must satisfy 0 <= input_block <= output_block < "
                                       "num_layers (", num_layers, ")"));
    }
    m.layers.emplace_back(static_cast<int>(in), static_cast<int>(out));
  }
  // knum is bounded so that E·N = E·knum² fits comfortably in int64 (and n in int).
  UM_RETURN_IF_ERROR(r.Int("knum", true, 1, 1 << 24, &m.knum));
  UM_RETURN_IF_ERROR(r.Int("value_expand", true, 1, 1 << 12, &m.value_expand));
  const int s = static_cast<int>(std::lround(std::sqrt(static_cast<double>(m.value_expand))));
  if (s * s != m.value_expand) {
    return r.Error("value_expand", absl::StrCat(m.value_expand, " is not a perfect square"));
  }
  UM_RETURN_IF_ERROR(r.Int("key_dim", true, 1, kMaxInt, &m.key_dim));
  UM_RETURN_IF_ERROR(r.Int("value_dim", true, 1, kMaxInt, &m.value_dim));
  UM_RETURN_IF_ERROR(r.Int("heads", true, 1, kMaxInt, &m.heads));
  UM_RETURN_IF_ERROR(r.Int("topk", true, 1, kMaxInt, &m.topk));
  UM_RETURN_IF_ERROR(r.Int("tucker_rank", true, 1, kMaxInt, &m.tucker_rank));
  UM_RETURN_IF_ERROR(r.Int("tucker_cores", true, 1, kMaxInt, &m.tucker_cores));
  UM_RETURN_IF_ERROR(r.PositiveFloat("norm_eps", false, &m.norm_eps));
  if (m.value_dim % m.tucker_cores != 0) {
    return r.Error("value_dim", absl::StrCat(m.value_dim, " is not divisible by tucker_cores (",
                                             m.tucker_cores, ")"));
  }
  if (m.topk > m.NumKeys()) {
    return r.Error("topk", absl::StrCat(m.topk, " exceeds the ", m.NumKeys(),
                                        " keys per side (sqrt(value_expand) * knum)"));
  }
  return m;
}

absl::StatusOr<TokenizerConfig> ParseTokenizer(const Json& object, int vocab_size,
                                               std::string_view file_name) {
  KeyReader r(object, file_name, "tokenizer.");
  TokenizerConfig t;
  UM_RETURN_IF_ERROR(r.String("type", false, &t.type));
  if (const Json* special = r.Find("special_tokens"); special != nullptr) {
    if (!special->is_object()) return r.Error("special_tokens", "not an object");
    for (auto it = special->begin(); it != special->end(); ++it) {
      KeyReader s(*special, file_name, "tokenizer.special_tokens.");
      int id = 0;
      UM_RETURN_IF_ERROR(s.Int(it.key(), true, 0, kMaxInt, &id));
      if (id < 256 || id >= vocab_size) {
        return s.Error(it.key(), absl::StrCat("id ", id, " is outside [256, vocab_size = ",
                                              vocab_size, ")"));
      }
      t.special_tokens[it.key()] = id;
    }
  }
  t.raw_json = object.dump(-1, ' ', false, Json::error_handler_t::replace);
  return t;
}

}  // namespace

int MemoryConfig::ExpandSqrt() const {
  int s = static_cast<int>(std::lround(std::sqrt(static_cast<double>(value_expand))));
  return s;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                              std::string_view file_name) {
  const Json root = Json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(file_name), ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(file_name), ": not a JSON object"));
  }
  KeyReader r(root, file_name, "");
  ModelConfig c;
  UM_RETURN_IF_ERROR(r.String("model_type", true, &c.model_type));
  if (c.model_type != "ultramem") {
    return r.Error("model_type", absl::StrCat("\"", c.model_type, "\" is not \"ultramem\""));
  }
  UM_RETURN_IF_ERROR(r.Int("vocab_size", true, 1, kMaxInt, &c.vocab_size));
  UM_RETURN_IF_ERROR(r.Int("hidden_size", true, 1, kMaxInt, &c.hidden_size));
  UM_RETURN_IF_ERROR(r.Int("num_layers", true, 1, kMaxInt, &c.num_layers));
  UM_RETURN_IF_ERROR(r.Int("num_attention_heads", true, 1, kMaxInt, &c.num_attention_heads));
  UM_RETURN_IF_ERROR(r.Int("num_key_value_heads", true, 1, kMaxInt, &c.num_key_value_heads));
  UM_RETURN_IF_ERROR(r.Int("head_dim", true, 1, kMaxInt, &c.head_dim));
  UM_RETURN_IF_ERROR(r.Int("intermediate_size", true, 1, kMaxInt, &c.intermediate_size));
  UM_RETURN_IF_ERROR(r.PositiveFloat("rms_norm_eps", false, &c.rms_norm_eps));
  UM_RETURN_IF_ERROR(r.PositiveFloat("rope_theta", false, &c.rope_theta));
  UM_RETURN_IF_ERROR(
      r.Int("max_position_embeddings", false, 1, kMaxInt, &c.max_position_embeddings));
  UM_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", false, &c.tie_word_embeddings));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Error("num_key_value_heads",
                   absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads (",
                                c.num_attention_heads, ")"));
  }
  if (c.head_dim % 2 != 0) {
    return r.Error("head_dim", absl::StrCat(c.head_dim, " is odd (RoPE rotates halves)"));
  }
  if (const Json* memory = r.Find("memory"); memory != nullptr && !memory->is_null()) {
    if (!memory->is_object()) return r.Error("memory", "not an object");
    UM_ASSIGN_OR_RETURN(c.memory, ParseMemory(*memory, c.num_layers, file_name));
  }
  if (const Json* tokenizer = r.Find("tokenizer"); tokenizer != nullptr) {
    if (!tokenizer->is_object()) return r.Error("tokenizer", "not an object");
    UM_ASSIGN_OR_RETURN(c.tokenizer, ParseTokenizer(*tokenizer, c.vocab_size, file_name));
  }
  return c;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const ModelConfig& config) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  const int64_t D = config.hidden_size, V = config.vocab_size, F = config.intermediate_size;
  const int64_t q_dim = int64_t{config.num_attention_heads} * config.head_dim;
  const int64_t kv_dim = int64_t{config.num_key_value_heads} * config.head_dim;
  t.push_back({"embed_tokens.weight", {V, D}});
  for (int b = 0; b < config.num_layers; ++b) {
    const std::string p = absl::StrCat("layers.", b, ".");
    t.push_back({p + "attn_norm.weight", {D}});
    t.push_back({p + "attn.q_proj.weight", {q_dim, D}});
    t.push_back({p + "attn.k_proj.weight", {kv_dim, D}});
    t.push_back({p + "attn.v_proj.weight", {kv_dim, D}});
    t.push_back({p + "attn.o_proj.weight", {D, q_dim}});
    t.push_back({p + "ffn_norm.weight", {D}});
    t.push_back({p + "ffn.gate_proj.weight", {F, D}});
    t.push_back({p + "ffn.up_proj.weight", {F, D}});
    t.push_back({p + "ffn.down_proj.weight", {D, F}});
  }
  t.push_back({"final_norm.weight", {D}});
  if (!config.tie_word_embeddings) t.push_back({"lm_head.weight", {V, D}});
  if (!config.memory) return t;
  const MemoryConfig& m = *config.memory;
  const int64_t H = m.heads, Dk = m.key_dim, Dv = m.value_dim, r = m.tucker_rank;
  for (int j = 0; j < config.NumMemoryLayers(); ++j) {
    const std::string p = absl::StrCat("memory.", j, ".");
    t.push_back({p + "query_proj.weight", {2 * Dk, D}});
    t.push_back({p + "query_norm.weight", {Dk}});
    t.push_back({p + "keys_norm.weight", {Dk}});
    t.push_back({p + "keys", {H, 2, m.NumKeys(), Dk, r}});
    for (int c = 0; c < m.tucker_cores; ++c) {
      t.push_back({absl::StrCat(p, "tucker_core.", c), {H, r, r}});
    }
    t.push_back({p + "tucker_core_u", {H, r}});
    t.push_back({p + "tucker_core_v", {H, r}});
    t.push_back({p + "values_proj.weight", {D, int64_t{m.value_expand} * Dv}});
    t.push_back({p + "shuffle_index", {m.NumVirtual()}});
    t.push_back({p + "values", {m.NumRows(), Dv}});
  }
  return t;
}

}  // namespace ultramem
