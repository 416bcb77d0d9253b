// Implementation of common/checkpoint_writer.h.
#include "common/checkpoint_writer.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <numeric>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ultramem {
namespace {

using Json = nlohmann::json;

// splitmix64: tiny, fast and identical on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float Uniform(float lo, float hi) {  // [lo, hi)
    return lo + (hi - lo) * static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f);
  }
  uint64_t Below(uint64_t n) { return Next() % n; }  // bias irrelevant for test data

 private:
  uint64_t state_;
};

bool IsNormWeight(const std::string& name) { return absl::StrContains(name, "norm.weight"); }

// File a tensor goes to when split: each value table alone (a memory server opens only these).
std::string FileFor(const std::string& name, bool split) {
  if (!split) return "model.safetensors";
  if (absl::StartsWith(name, "memory.") && absl::EndsWith(name, ".values")) {
    const std::string j = name.substr(7, name.size() - 7 - 7);  // between "memory." and ".values"
    return absl::StrCat("model-values-", j, ".safetensors");
  }
  return "model-dense.safetensors";
}

// A random permutation of [0, n) (Fisher-Yates) as little-endian I32 or I64 bytes.
void ShuffleBytes(int64_t n, DType dtype, Rng& rng, std::string* bytes) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) {
    std::swap(perm[i], perm[rng.Below(static_cast<uint64_t>(i) + 1)]);
  }
  *bytes = dtype == DType::kI32 ? I32Bytes(std::vector<int32_t>(perm.begin(), perm.end()))
                                : I64Bytes(perm);
}

// Shuffle indices at least this long are generated on threads of their own.
constexpr int64_t kParallelShuffle = int64_t{1} << 24;

}  // namespace

std::string ModelConfigToJson(const ModelConfig& c) {
  Json j = {
      {"model_type", c.model_type},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_layers", c.num_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"intermediate_size", c.intermediate_size},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"max_position_embeddings", c.max_position_embeddings},
      {"tie_word_embeddings", c.tie_word_embeddings},
  };
  if (c.memory) {
    const MemoryConfig& m = *c.memory;
    Json layers = Json::array();
    for (const auto& [in, out] : m.layers) layers.push_back({in, out});
    j["memory"] = {{"layers", layers},          {"knum", m.knum},
                   {"value_expand", m.value_expand}, {"key_dim", m.key_dim},
                   {"value_dim", m.value_dim},   {"heads", m.heads},
                   {"topk", m.topk},             {"tucker_rank", m.tucker_rank},
                   {"tucker_cores", m.tucker_cores}, {"norm_eps", m.norm_eps}};
  }
  Json tokenizer = Json::parse(c.tokenizer.raw_json, nullptr, /*allow_exceptions=*/false);
  if (tokenizer.is_discarded() || !tokenizer.is_object()) tokenizer = Json::object();
  tokenizer["type"] = c.tokenizer.type;
  tokenizer["special_tokens"] = c.tokenizer.special_tokens;
  j["tokenizer"] = tokenizer;
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

std::vector<TensorToWrite> MakeRandomTensors(const ModelConfig& config,
                                             const RandomCheckpointOptions& options) {
  Rng rng(options.seed);
  const auto expected = ExpectedTensors(config);
  std::vector<TensorToWrite> out;
  struct ShuffleJob {
    size_t index;  // into out
    int64_t n;
    DType dtype;
    uint64_t seed;
  };
  std::vector<ShuffleJob> jobs;
  for (const auto& [name, shape] : expected) {
    if (options.synthetic_values && absl::StartsWith(name, "memory.") &&
        absl::EndsWith(name, ".values")) {
      continue;
    }
    TensorToWrite t;
    t.name = name;
    t.shape = shape;
    const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1},
                                      [](int64_t a, int64_t b) { return a * b; });
    if (absl::EndsWith(name, ".shuffle_index")) {
      t.dtype = options.shuffle_dtype;
      if (n < kParallelShuffle) {
        ShuffleBytes(n, t.dtype, rng, &t.bytes);
      } else {
        // Benchmark-sized tables (hundreds of millions of entries): each layer's permutation on
        // a thread of its own, from a seed drawn here, so that the bytes still depend only on
        // the options.
        jobs.push_back({out.size(), n, t.dtype, rng.Next()});
      }
    } else {
      const float base = IsNormWeight(name) ? 1.0f : 0.0f;
      std::vector<float> values(static_cast<size_t>(n));
      for (float& v : values) v = base + rng.Uniform(-options.scale, options.scale);
      t.dtype = options.float_dtype;
      t.bytes = FloatBytes(t.dtype, values);
    }
    out.push_back(std::move(t));
  }
  std::vector<std::thread> workers;
  for (const ShuffleJob& job : jobs) {
    workers.emplace_back([&out, job] {
      Rng sub(job.seed);
      ShuffleBytes(job.n, job.dtype, sub, &out[job.index].bytes);
    });
  }
  for (std::thread& w : workers) w.join();
  return out;
}

absl::Status WriteCheckpoint(const std::string& dir, const ModelConfig& config,
                             const std::vector<TensorToWrite>& tensors, bool split_files) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  const std::string base = dir + "/";
  absl::Status s = WriteFileAtomically(base + "config.json", ModelConfigToJson(config));
  if (!s.ok()) return s;

  std::map<std::string, std::vector<TensorToWrite>> by_file;
  Json weight_map = Json::object();
  for (const TensorToWrite& t : tensors) {
    const std::string file = FileFor(t.name, split_files);
    by_file[file].push_back(t);
    weight_map[t.name] = file;
  }
  if (by_file.empty()) by_file["model.safetensors"];  // an empty model still has its file
  for (auto& [file, file_tensors] : by_file) {
    // Widest elements first: with the 8-byte-padded header every tensor then starts aligned to
    // its element size, so readers may use the mapped data in place.
    std::stable_sort(file_tensors.begin(), file_tensors.end(),
                     [](const TensorToWrite& a, const TensorToWrite& b) {
                       return DTypeSize(a.dtype) > DTypeSize(b.dtype);
                     });
    s = WriteSafetensors(base + file, file_tensors, {{"format", "pt"}});
    if (!s.ok()) return s;
  }
  if (split_files) {
    const Json index = {{"metadata", Json::object()}, {"weight_map", weight_map}};
    s = WriteFileAtomically(base + "model.safetensors.index.json", index.dump(2) + "\n");
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status WriteRandomCheckpoint(const std::string& dir, const ModelConfig& config,
                                   const RandomCheckpointOptions& options) {
  absl::Status s =
      WriteCheckpoint(dir, config, MakeRandomTensors(config, options), options.split_files);
  if (!s.ok() || !options.synthetic_values) return s;
  const Json synthetic = {{"seed", options.synthetic_values->seed},
                          {"scale", options.synthetic_values->scale}};
  return WriteFileAtomically(dir + "/" + kSyntheticValuesFile, synthetic.dump(2) + "\n");
}

}  // namespace ultramem
