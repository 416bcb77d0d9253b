// ultramem-bench-decode: CPU decode step time of a model at a given batch, with the bytes floor.
//
//   ultramem-bench-decode --model DIR [--batch 1[,16,...]] [--prompt 32] [--steps 32] [--threads 0]
//       [--backend cpu|cuda] [--shard_map MAP]
//
// Prints one JSON object per batch size (one model load serves them all): step time, tokens/s, bytes read per step (dense weights once plus the
// touched value rows and the KV cache), the copy bandwidth measured in the same run (bytes read +
// written per second by memcpy over buffers far larger than the caches, with as many threads as
// the engine), and time per step against the floor = bytes / bandwidth. The floor is the CPU
// engine's: with another --backend those four fields are null (bench/gpu measures the device's).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/flags_util.h"
#include "common/status.h"
#include "common/tool_main.h"
#include "compute_node/model_runtime.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::vector<std::string>, batch, {"1"},
          "sequences decoded together; a comma-separated list measures each in turn");
ABSL_FLAG(int, prompt, 32, "prompt tokens per sequence before timing");
ABSL_FLAG(int, steps, 32, "timed decode steps");
ABSL_FLAG(int, threads, 0, "CPU threads (0: one per core)");
ABSL_FLAG(std::string, backend, "cpu", "engine backend: cpu, or cuda when built with CUDA");
ABSL_FLAG(std::string, shard_map, "", "serve memory layers from the memory servers of this shard map");

namespace ultramem {
namespace {

using Clock = std::chrono::steady_clock;

// memcpy bandwidth (read + write bytes per second) with `threads` threads over 256 MiB each way.
double CopyBandwidth(int threads) {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, i] {
        const size_t b = bytes * i / threads, e = bytes * (i + 1) / threads;
        std::memcpy(dst.data() + b, src.data() + b, e - b);
      });
    }
    for (auto& t : pool) t.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 2.0 * bytes / s);
  }
  return best;
}

absl::Status RunBatch(ModelRuntime& runtime, int batch, int threads, double bandwidth);

absl::Status Run() {
  ModelRuntimeOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.engine.num_threads = absl::GetFlag(FLAGS_threads);
  options.shard_map_path = absl::GetFlag(FLAGS_shard_map);
  options.engine.backend = absl::GetFlag(FLAGS_backend);
  const int threads = options.engine.num_threads > 0
                          ? options.engine.num_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> batches;
  for (const std::string& b : absl::GetFlag(FLAGS_batch)) {
    int n;
    if (!absl::SimpleAtoi(b, &n) || n < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--batch: '", b, "' is not a positive integer"));
    }
    batches.push_back(n);
  }
  UM_ASSIGN_OR_RETURN(std::unique_ptr<ModelRuntime> rt, OpenModelRuntime(options));
  // The floor is the CPU engine's (host memcpy bandwidth, float32 KV cache); other backends
  // report step times only (bench/gpu has the device floor).
  const double bandwidth = options.engine.backend == "cpu" ? CopyBandwidth(threads) : 0.0;
  for (const int batch : batches) UM_RETURN_IF_ERROR(RunBatch(*rt, batch, threads, bandwidth));
  return absl::OkStatus();
}

absl::Status RunBatch(ModelRuntime& runtime, int batch, int threads, double bandwidth) {
  ModelRuntime* rt = &runtime;
  const ModelConfig& cfg = rt->engine->config();
  const int prompt = absl::GetFlag(FLAGS_prompt), steps = absl::GetFlag(FLAGS_steps);
  const auto prefill_start = Clock::now();

  std::vector<std::unique_ptr<Sequence>> seqs;
  for (int b = 0; b < batch; ++b) {
    seqs.push_back(rt->engine->NewSequence());
    std::vector<int32_t> tokens(prompt);
    for (int i = 0; i < prompt; ++i) tokens[i] = (7 * i + 13 * b) % 256;
    SequenceInput in{seqs.back().get(), absl::MakeConstSpan(tokens), false};
    ForwardOutput out;
    UM_RETURN_IF_ERROR(rt->engine->Forward({&in, 1}, {}, &out));
  }
  const double prefill_s = std::chrono::duration<double>(Clock::now() - prefill_start).count();
  std::vector<int32_t> next(batch);
  std::vector<double> step_s;
  const RemotePoolerStats before = rt->remote ? rt->remote->Stats() : RemotePoolerStats{};
  ForwardOutput out;
  for (int s = 0; s < steps + 2; ++s) {
    std::vector<SequenceInput> inputs;
    for (int b = 0; b < batch; ++b) {
      next[b] = (s * 31 + b * 17) % 256;
      inputs.push_back({seqs[b].get(), absl::MakeConstSpan(&next[b], 1), false});
    }
    const auto t0 = Clock::now();
    UM_RETURN_IF_ERROR(rt->engine->Forward(absl::MakeConstSpan(inputs), {}, &out));
    if (s >= 2) step_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const RemotePoolerStats after = rt->remote ? rt->remote->Stats() : RemotePoolerStats{};
  const double lookup_s = after.lookup_seconds - before.lookup_seconds;
  const double wait_s = after.wait_seconds - before.wait_seconds;
  std::sort(step_s.begin(), step_s.end());
  const double median = step_s[step_s.size() / 2];

  // Bytes one step reads: dense weights once, per token the touched value rows and its KV cache.
  int64_t bytes = rt->weights->DenseBytesPerToken();
  const int64_t ctx = prompt + steps / 2;
  const int64_t kv_per_token = 2LL * cfg.num_layers * cfg.num_key_value_heads * cfg.head_dim *
                               ctx * static_cast<int64_t>(sizeof(float));
  int64_t value_row_bytes = 0;
  if (cfg.memory) {
    const MemoryConfig& mc = *cfg.memory;
    const auto v = rt->checkpoint->Get("memory.0.values");
    const int64_t elem = v.ok() ? static_cast<int64_t>(DTypeSize(v->entry->dtype))
                         : (rt->checkpoint->synthetic_values() ? 2 : 4);
    value_row_bytes = static_cast<int64_t>(cfg.NumMemoryLayers()) * mc.SelectionsPerToken() *
                      mc.value_dim * elem;
  }
  bytes += batch * (kv_per_token + value_row_bytes);
  std::string floor = "\"bytes_per_step\": null, \"copy_gbps\": null, \"floor_ms\": null, \"vs_floor\": null";
  if (bandwidth > 0) {
    const double floor_s = bytes / bandwidth;
    floor = absl::StrFormat(
        "\"bytes_per_step\": %d, \"copy_gbps\": %.2f, \"floor_ms\": %.4f, \"vs_floor\": %.3f",
        bytes, bandwidth / 1e9, floor_s * 1e3, median / floor_s);
  }
  std::printf(
      "{\"batch\": %d, \"threads\": %d, \"step_ms\": %.4f, \"tokens_per_s\": %.2f, %s, "
      "\"lookup_ms_per_step\": %.4f, \"wait_ms_per_step\": %.4f, \"hidden_share\": %.3f, "
      "\"prefill_s\": %.3f}\n",
      batch, threads, median * 1e3, batch / median, floor.c_str(), lookup_s * 1e3 / (steps + 2),
      wait_s * 1e3 / (steps + 2), lookup_s > 0 ? 1.0 - wait_s / lookup_s : 0.0, prefill_s);
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace
}  // namespace ultramem

int main(int argc, char** argv) {
  return ultramem::RunTool(argc, argv, "ultramem-bench-decode", ultramem::Run);
}
