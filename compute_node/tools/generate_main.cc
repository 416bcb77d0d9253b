// ultramem-generate: streams a model's continuation of a prompt to stdout.
//
//   ultramem-generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
//                     [--top-k K] [--seed S]
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/file_util.h"
#include "common/flags_util.h"
#include "common/status.h"
#include "common/tool_main.h"
#include "compute_node/model_runtime.h"
#include "compute_node/sampler.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(int, max_tokens, 64, "tokens to generate at most");
ABSL_FLAG(float, temperature, 0.0f, "0: greedy");
ABSL_FLAG(float, top_p, 1.0f, "nucleus mass in (0, 1]");
ABSL_FLAG(int, top_k, 0, "0: no limit");
ABSL_FLAG(uint64_t, seed, 0, "random seed; the same seed repeats a run");
ABSL_FLAG(std::string, shard_map, "", "shard map (protobuf text): memory layers served by memory servers");
ABSL_FLAG(std::string, memory_tls_ca, "", "PEM CA of the memory servers (enables TLS to them)");
ABSL_FLAG(std::string, memory_tls_cert, "", "PEM client certificate for mutual TLS to memory servers");
ABSL_FLAG(std::string, memory_tls_key, "", "PEM key of --memory-tls-cert");
ABSL_FLAG(int, threads, 0, "CPU threads (0: one per core)");
ABSL_FLAG(bool, bos, true, "start the prompt with the tokenizer's <|bos|> when it has one");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past <|eos|> (benchmarks, tests)");
ABSL_FLAG(bool, stats, true, "print timing to stderr at the end");

namespace ultramem {
namespace {

absl::Status Run() {
  ModelRuntimeOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.engine.num_threads = absl::GetFlag(FLAGS_threads);
  options.shard_map_path = absl::GetFlag(FLAGS_shard_map);
  UM_ASSIGN_OR_RETURN(options.remote.root_certs_pem, ReadFileOrEmpty(absl::GetFlag(FLAGS_memory_tls_ca)));
  UM_ASSIGN_OR_RETURN(options.remote.client_cert_pem, ReadFileOrEmpty(absl::GetFlag(FLAGS_memory_tls_cert)));
  UM_ASSIGN_OR_RETURN(options.remote.client_key_pem, ReadFileOrEmpty(absl::GetFlag(FLAGS_memory_tls_key)));
  if (options.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  SamplingParams params;
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.seed = absl::GetFlag(FLAGS_seed);
  UM_RETURN_IF_ERROR(params.Validate());
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 0) return absl::InvalidArgumentError("--max-tokens must be >= 0");

  UM_ASSIGN_OR_RETURN(std::unique_ptr<ModelRuntime> rt, OpenModelRuntime(options));
  std::vector<int32_t> prompt;
  if (absl::GetFlag(FLAGS_bos) && rt->tokenizer.bos()) prompt.push_back(*rt->tokenizer.bos());
  for (int32_t id : rt->tokenizer.Encode(absl::GetFlag(FLAGS_prompt))) prompt.push_back(id);
  if (prompt.empty()) return absl::InvalidArgumentError("--prompt is empty and the model has no <|bos|>");
  const int64_t context = rt->engine->config().max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) >= context) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", prompt.size(),
                                                   " tokens does not fit the context of ", context));
  }

  Sampler sampler(params);
  std::unique_ptr<Sequence> seq = rt->engine->NewSequence();
  const auto t0 = std::chrono::steady_clock::now();
  ForwardOutput out;
  SequenceInput input{seq.get(), absl::MakeConstSpan(prompt), false};
  UM_RETURN_IF_ERROR(rt->engine->Forward({&input, 1}, {}, &out));
  const auto t_first = std::chrono::steady_clock::now();
  int generated = 0;
  std::optional<int32_t> eos = rt->tokenizer.eos();
  if (absl::GetFlag(FLAGS_ignore_eos)) eos.reset();
  while (generated < max_tokens) {
    const int32_t next = sampler.Sample(absl::MakeConstSpan(out.logits.data(), out.logits.size()));
    ++generated;
    if (eos && next == *eos) break;
    const std::string piece = rt->tokenizer.DecodeOne(next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (generated == max_tokens || seq->length() + 1 >= context) break;
    SequenceInput step{seq.get(), absl::MakeConstSpan(&next, 1), false};
    UM_RETURN_IF_ERROR(rt->engine->Forward({&step, 1}, {}, &out));
  }
  std::printf("\n");
  const auto t_end = std::chrono::steady_clock::now();
  if (absl::GetFlag(FLAGS_stats)) {
    const double prefill_s = std::chrono::duration<double>(t_first - t0).count();
    const double decode_s = std::chrono::duration<double>(t_end - t_first).count();
    std::fprintf(stderr, "prompt %zu tokens in %.3f s; %d tokens in %.3f s (%.1f tokens/s)\n",
                 prompt.size(), prefill_s, generated, decode_s,
                 decode_s > 0 ? generated / decode_s : 0.0);
    if (rt->remote != nullptr) {
      const RemotePoolerStats st = rt->remote->Stats();
      std::fprintf(stderr,
                   "memory lookups %lld attempts %lld retries %lld hedges %lld failures %lld; "
                   "waited %.3f s of %.3f s in flight (%.0f%% hidden)\n",
                   static_cast<long long>(st.lookups), static_cast<long long>(st.attempts),
                   static_cast<long long>(st.retries), static_cast<long long>(st.hedges),
                   static_cast<long long>(st.failures), st.wait_seconds, st.lookup_seconds,
                   st.lookup_seconds > 0 ? 100.0 * (1.0 - st.wait_seconds / st.lookup_seconds) : 0.0);
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace ultramem

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ultramem-generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]");
  return ultramem::RunTool(argc, argv, "ultramem-generate", ultramem::Run);
}
