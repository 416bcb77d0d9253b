// ultramem-score: logits and perplexity of a token sequence (or a text file) under a model.
//
//   ultramem-score --model DIR --tokens 1,2,3 --logits-out L.npy [--rows-out R.npy] [--decode]
//   ultramem-score --model DIR --text FILE
//
// Without --decode the tokens run as one prefill; with it, one at a time through the KV cache.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/npy.h"
#include "common/file_util.h"
#include "common/flags_util.h"
#include "common/status.h"
#include "common/tool_main.h"
#include "compute_node/model_runtime.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json + safetensors)");
ABSL_FLAG(std::string, tokens, "", "comma-separated token ids");
ABSL_FLAG(std::string, text, "", "a text file, tokenized with the model's tokenizer");
ABSL_FLAG(std::string, logits_out, "", "write float32 logits [T, V] to this .npy file");
ABSL_FLAG(std::string, rows_out, "", "write int64 selected t values [J, T, H*m] to this .npy file");
ABSL_FLAG(bool, decode, false, "feed tokens one at a time through the KV cache");
ABSL_FLAG(std::string, shard_map, "", "shard map (protobuf text): memory layers served by memory servers");
ABSL_FLAG(std::string, memory_tls_ca, "", "PEM CA of the memory servers (enables TLS to them)");
ABSL_FLAG(std::string, memory_tls_cert, "", "PEM client certificate for mutual TLS to memory servers");
ABSL_FLAG(std::string, memory_tls_key, "", "PEM key of --memory-tls-cert");
ABSL_FLAG(int, threads, 0, "CPU threads (0: one per core)");
ABSL_FLAG(int, window, 0, "tokens per evaluation window for --text (0: max_position_embeddings)");

namespace ultramem {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseTokens(const std::string& list) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens: '", piece, "' is not an integer"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--tokens is empty");
  return ids;
}

// Adds -log p(tokens[i+1]) for every row i < rows-1 of logits [rows, V] whose successor exists.
void AccumulateNll(const float* logits, int64_t rows, int64_t vocab, const int32_t* next,
                   int64_t count, double* nll_sum) {
  for (int64_t i = 0; i < count; ++i) {
    const float* row = logits + i * vocab;
    double max_logit = row[0];
    for (int64_t v = 1; v < vocab; ++v) max_logit = std::max<double>(max_logit, row[v]);
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max_logit);
    *nll_sum += std::log(sum) + max_logit - row[next[i]];
  }
}

absl::Status Run() {
  ModelRuntimeOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.engine.num_threads = absl::GetFlag(FLAGS_threads);
  options.shard_map_path = absl::GetFlag(FLAGS_shard_map);
  UM_ASSIGN_OR_RETURN(options.remote.root_certs_pem, ReadFileOrEmpty(absl::GetFlag(FLAGS_memory_tls_ca)));
  UM_ASSIGN_OR_RETURN(options.remote.client_cert_pem, ReadFileOrEmpty(absl::GetFlag(FLAGS_memory_tls_cert)));
  UM_ASSIGN_OR_RETURN(options.remote.client_key_pem, ReadFileOrEmpty(absl::GetFlag(FLAGS_memory_tls_key)));
  if (options.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  const bool from_text = !absl::GetFlag(FLAGS_text).empty();
  if (from_text == !absl::GetFlag(FLAGS_tokens).empty()) {
    return absl::InvalidArgumentError("give exactly one of --tokens and --text");
  }
  UM_ASSIGN_OR_RETURN(std::unique_ptr<ModelRuntime> rt, OpenModelRuntime(options));
  const ModelConfig& cfg = rt->engine->config();
  std::vector<int32_t> tokens;
  if (from_text) {
    std::ifstream in(absl::GetFlag(FLAGS_text), std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read --text ", absl::GetFlag(FLAGS_text)));
    std::stringstream ss;
    ss << in.rdbuf();
    tokens = rt->tokenizer.Encode(ss.str());
    if (tokens.size() < 2) return absl::InvalidArgumentError("--text needs at least 2 bytes");
  } else {
    UM_ASSIGN_OR_RETURN(tokens, ParseTokens(absl::GetFlag(FLAGS_tokens)));
  }
  const bool decode = absl::GetFlag(FLAGS_decode);
  const bool want_logits = !absl::GetFlag(FLAGS_logits_out).empty();
  const bool want_rows = !absl::GetFlag(FLAGS_rows_out).empty();
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t V = cfg.vocab_size;
  int64_t window = absl::GetFlag(FLAGS_window) > 0 ? absl::GetFlag(FLAGS_window) : cfg.max_position_embeddings;
  if (!from_text && T > window) {
    return absl::InvalidArgumentError(absl::StrCat(T, " tokens exceed the context of ", window));
  }
  const int J = cfg.NumMemoryLayers();
  const int64_t K = J > 0 ? cfg.memory->SelectionsPerToken() : 0;

  std::vector<float> all_logits;
  if (want_logits) all_logits.resize(T * V);
  std::vector<int64_t> all_rows;
  if (want_rows) all_rows.resize(J * T * K);
  double nll = 0.0;
  int64_t predicted = 0;
  ForwardOptions fopts;
  fopts.record_selections = want_rows;
  const auto start = std::chrono::steady_clock::now();
  // Non-overlapping windows; each starts a fresh sequence (perplexity of --text is per window).
  for (int64_t w0 = 0; w0 < T; w0 += window) {
    const int64_t w1 = std::min(T, w0 + window);
    std::unique_ptr<Sequence> seq = rt->engine->NewSequence();
    const int64_t step = decode ? 1 : w1 - w0;
    for (int64_t p = w0; p < w1; p += step) {
      const int64_t n = std::min(step, w1 - p);
      SequenceInput input{seq.get(), absl::MakeConstSpan(tokens.data() + p, n), true};
      ForwardOutput out;
      UM_RETURN_IF_ERROR(rt->engine->Forward({&input, 1}, fopts, &out));
      if (want_logits) std::copy(out.logits.begin(), out.logits.end(), all_logits.begin() + p * V);
      if (want_rows) {
        for (int j = 0; j < J; ++j) {
          std::copy_n(out.selections.data() + j * n * K, n * K, all_rows.data() + (j * T + p) * K);
        }
      }
      const int64_t scored = std::min(n, w1 - 1 - p);  // rows whose next token is in the window
      if (scored > 0) {
        AccumulateNll(out.logits.data(), n, V, tokens.data() + p + 1, scored, &nll);
        predicted += scored;
      }
    }
    if (from_text && w1 < T) {
      std::fprintf(stderr, "\r%lld/%lld tokens", static_cast<long long>(w1), static_cast<long long>(T));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (want_logits) UM_RETURN_IF_ERROR(WriteNpyF32(absl::GetFlag(FLAGS_logits_out), {T, V}, all_logits.data()));
  if (want_rows) UM_RETURN_IF_ERROR(WriteNpyI64(absl::GetFlag(FLAGS_rows_out), {J, T, K}, all_rows.data()));
  const double mean_nll = predicted > 0 ? nll / predicted : 0.0;
  std::printf("tokens %lld predicted %lld nll %.9f perplexity %.9f bits_per_token %.9f seconds %.3f\n",
              static_cast<long long>(T), static_cast<long long>(predicted), mean_nll,
              std::exp(mean_nll), mean_nll / std::log(2.0), seconds);
  return absl::OkStatus();
}

}  // namespace
}  // namespace ultramem

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ultramem-score --model DIR (--tokens 1,2,3 | --text FILE) [--logits-out L.npy] [--rows-out R.npy] [--decode]");
  return ultramem::RunTool(argc, argv, "ultramem-score", ultramem::Run);
}
