// Implementation of bench/memory_server/bench_common.h.
#include "bench/memory_server/bench_common.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "common/checkpoint_writer.h"

namespace ultramem::memory::bench {

BenchStore::BenchStore(int knum, int value_dim, int64_t synthetic_seed) {
  char tmpl[] = "/tmp/ultramem_ms_bench_XXXXXX";
  dir = mkdtemp(tmpl);
  checkpoint_dir = dir + "/model";
  store_dir = dir + "/store";
  ModelConfig c;
  c.model_type = "ultramem";
  c.vocab_size = 300;
  c.hidden_size = 32;
  c.num_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  c.intermediate_size = 64;
  c.tokenizer.special_tokens = {{"<|bos|>", 256}, {"<|eos|>", 257}};
  MemoryConfig m;
  m.layers = {{0, 0}};
  m.knum = knum;
  m.value_expand = 4;
  m.key_dim = 8;
  m.value_dim = value_dim;
  m.heads = 2;
  m.topk = 32;
  m.tucker_rank = 2;
  m.tucker_cores = 2;
  c.memory = m;
  RandomCheckpointOptions options;
  options.float_dtype = DType::kBF16;
  options.split_files = true;
  options.scale = 1.0f;
  if (synthetic_seed >= 0) {
    options.synthetic_values = SyntheticValues{static_cast<uint64_t>(synthetic_seed), 1.0f};
  }
  absl::Status written = WriteRandomCheckpoint(checkpoint_dir, c, options);
  if (!written.ok()) {
    std::fprintf(stderr, "checkpoint: %s\n", written.ToString().c_str());
    std::exit(1);
  }
  ImportOptions import;
  import.checkpoint_dir = checkpoint_dir;
  import.store_dir = store_dir;
  import.version = "bench";
  auto result = RunImport(import);
  if (!result.ok()) {
    std::fprintf(stderr, "import: %s\n", result.status().ToString().c_str());
    std::exit(1);
  }
  manifest = result->manifest;
  import_seconds = result->seconds;
}

BenchStore::~BenchStore() {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::vector<Batch> MakeBatches(int count, int num_tokens, int per_token, int64_t num_rows,
                               double zipf_s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> cdf;
  if (zipf_s > 0) {
    cdf.resize(static_cast<size_t>(num_rows));
    double total = 0;
    for (int64_t k = 0; k < num_rows; ++k) cdf[k] = (total += std::pow(k + 1.0, -zipf_s));
  }
  std::uniform_int_distribution<int64_t> uniform(0, num_rows - 1);
  std::uniform_real_distribution<double> u(0, cdf.empty() ? 1 : cdf.back());
  std::uniform_int_distribution<int32_t> group(0, 3);
  std::normal_distribution<float> weight(0, 1);
  std::vector<Batch> batches(count);
  for (Batch& b : batches) {
    b.num_tokens = num_tokens;
    for (int s = 0; s < num_tokens * per_token; ++s) {
      int64_t row;
      if (cdf.empty()) {
        row = uniform(rng);
      } else {
        const int64_t rank = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
        row = static_cast<int64_t>((static_cast<uint64_t>(rank) * 2654435761ull) % num_rows);
      }
      b.rows.push_back(row);
      b.groups.push_back(group(rng));
      b.weights.push_back(weight(rng));
      b.weights.push_back(weight(rng));
    }
  }
  return batches;
}

ultramem::v1::LookupRequest ToRequest(const Batch& b, bool bf16_out) {
  ultramem::v1::LookupRequest r;
  r.set_layer(0);
  r.set_num_tokens(static_cast<uint32_t>(b.num_tokens));
  r.set_num_selections(static_cast<uint32_t>(b.rows.size()));
  r.set_row_type(ultramem::v1::INDEX_TYPE_INT64);
  r.set_rows(std::string(reinterpret_cast<const char*>(b.rows.data()), b.rows.size() * 8));
  r.set_groups(std::string(reinterpret_cast<const char*>(b.groups.data()), b.groups.size() * 4));
  r.set_num_cores(2);
  r.set_weights(std::string(reinterpret_cast<const char*>(b.weights.data()), b.weights.size() * 4));
  r.set_out_dtype(bf16_out ? ultramem::v1::DTYPE_BF16 : ultramem::v1::DTYPE_F32);
  return r;
}

double Percentile(std::vector<double>& samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const size_t i = std::min(samples.size() - 1, static_cast<size_t>(p / 100.0 * samples.size()));
  return samples[i];
}

}  // namespace ultramem::memory::bench
