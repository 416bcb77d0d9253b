// ultramem-cuda-bench: decode step time of the CUDA engine at several batch sizes with a fixed
// context, eager (kernel by kernel) and replayed from the step's CUDA graph, against the bytes
// floor (dense weights and keys read once, the KV cache read, the touched value rows) over the
// device copy bandwidth measured in the same run. Prints a table and one JSON line per batch.
//
//   ultramem-cuda-bench --model DIR [--batches 1,16,64,256] [--context 512] [--iters 50]
//                       [--chain_kernels 60] [--timeline_batches 1,64]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/tool_main.h"
#include "compute_node/cuda/chain_probe.cuh"
#include "compute_node/cuda/cuda_engine.h"
#include "compute_node/cuda/gemv.cuh"
#include "compute_node/cuda/launch.cuh"
#include "compute_node/cuda/memory_topm.cuh"
#include "compute_node/cuda/tools/kernel_timeline.h"
#include "compute_node/model_runtime.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, batches, "1,16,64,256", "batch sizes");
ABSL_FLAG(int, context, 512, "tokens already in each sequence's KV cache before the timed step");
ABSL_FLAG(int, iters, 50, "timed replays per measurement");
ABSL_FLAG(std::string, timeline_batches, "",
          "batch sizes (of --batches) after whose timing one more graph replay runs under CUPTI and its "
          "per-kernel timeline is printed (start, end, stream, name)");
ABSL_FLAG(int, chain_kernels, 60,
          "also time a graph of this many dependent no-op kernels, and the dense products alone (0: skip)");

namespace ultramem {
namespace {

// The SM clock in kHz, to turn the traces' clock64() cycles into µs.
int SmClockKhz() {
  int device = 0, khz = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device);
  return khz;
}

// UM_CUDA_GEMV_TRACE=1: one more graph replay of the last step (with its warm-up replays), then
// the staged GEMV's timeline by product shape (block 0 of each launch; means over those replays).
void PrintGemvTrace(Engine* engine) {
  cuda::TakeGemvTrace();
  if (!CudaReplayLastStepMicros(engine, 1, true).ok()) return;
  std::vector<cuda::GemvTraceRecord> recs = cuda::TakeGemvTrace();
  if (recs.empty()) return;
  const int khz = SmClockKhz();
  const double us_per_cycle = 1e3 / khz;
  std::map<std::pair<int, int>, std::vector<const cuda::GemvTraceRecord*>> by_shape;
  for (const auto& r : recs) by_shape[{r.out_dim, r.in_dim}].push_back(&r);
  std::printf("staged GEMV trace (block 0 of %zu launches in replays of the last step; us, SM clock %.0f MHz):\n",
              recs.size(), khz / 1e3);
  std::printf("  %6s %6s %5s %12s %14s %12s %10s %14s\n", "out", "in", "n", "start->wait", "wait->ready", "ready->end",
              "span", "ready at wait");
  for (const auto& [shape, rs] : by_shape) {
    double wait = 0, ready = 0, end = 0, span = 0, at = 0;
    for (const auto* r : rs) {
      wait += r->wait_cycles * us_per_cycle;
      ready += r->ready_cycles * us_per_cycle;
      end += r->end_cycles * us_per_cycle;
      span += (r->end_ns - r->start_ns) / 1e3;
      at += r->ready_at_wait;
    }
    const double n = static_cast<double>(rs.size());
    std::printf("  %6d %6d %5zu %12.2f %14.2f %12.2f %10.2f %13.0f%%\n", shape.first, shape.second, rs.size(),
                wait / n, ready / n, end / n, span / n, 100 * at / n);
  }
}

// UM_CUDA_TOPM_TRACE=1: one more graph replay of the last step, then the memory top-m kernel's
// phases (block (0, 0) of each launch; means over the step's memory layers, µs at the SM clock).
void PrintTopMTrace(Engine* engine) {
  cuda::TakeTopMTrace();
  if (!CudaReplayLastStepMicros(engine, 1, true).ok()) return;
  const std::vector<cuda::TopMTraceRecord> recs = cuda::TakeTopMTrace();
  if (recs.empty()) return;
  const double us_per_cycle = 1e3 / SmClockKhz();
  double mean[6] = {}, total = 0;
  for (const auto& r : recs) {
    for (int i = 0; i < 6; ++i) mean[i] += r.cycles[i] * us_per_cycle / recs.size();
  }
  for (double m : mean) total += m;
  std::printf("top-m trace (%d tokens, block (0, 0) of %zu launches, us): wait %.2f, scores + proxies %.2f, "
              "row/column selections %.2f, grid %.2f, grid selection %.2f, outputs %.2f; %.2f after the wait\n",
              recs[0].tokens, recs.size(), mean[0], mean[1], mean[2], mean[3], mean[4], mean[5], total - mean[0]);
}

absl::Status Run() {
  ModelRuntimeOptions ro;
  ro.model_dir = absl::GetFlag(FLAGS_model);
  ro.engine.backend = "cuda";
  const auto t_load = std::chrono::steady_clock::now();
  UM_ASSIGN_OR_RETURN(std::unique_ptr<ModelRuntime> rt, OpenModelRuntime(ro));
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const ModelConfig& cfg = rt->engine->config();
  std::vector<int> batches;
  for (auto piece : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
    int b;
    if (absl::SimpleAtoi(piece, &b) && b > 0) batches.push_back(b);
  }
  const int ctx = absl::GetFlag(FLAGS_context), iters = absl::GetFlag(FLAGS_iters);
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  std::vector<int> timeline_batches;
  for (auto piece : absl::StrSplit(absl::GetFlag(FLAGS_timeline_batches), ',', absl::SkipEmpty())) {
    int b;
    if (!absl::SimpleAtoi(piece, &b)) {
      return absl::InvalidArgumentError(absl::StrCat("--timeline_batches: not a number: ", piece));
    }
    timeline_batches.push_back(b);
  }
  UM_ASSIGN_OR_RETURN(double copy_bw, CudaCopyBandwidth(size_t{2} << 30));
  if (const int n = absl::GetFlag(FLAGS_chain_kernels); n > 0) {
    // The per-kernel latency floor of a dependent chain (what a batch-1 step is made of), and the
    // dense products alone.
    for (int blocks : {1, cuda::SmCount()}) {
      UM_ASSIGN_OR_RETURN(cuda::ChainProbe p, cuda::MeasureKernelChain(n, blocks, 20));
      std::printf("dependent kernel chain (%d kernels of %d blocks, graph): %.2f us a kernel plain, %.2f with PDL, "
                  "%.2f with PDL released before the wait, %.2f with 2 us of work before each wait\n",
                  n, blocks, p.plain_us, p.pdl_us, p.pdl_early_us, p.pdl_sleep_us);
    }
    const int qkv_width = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim;
    UM_ASSIGN_OR_RETURN(cuda::GemvChainProbe g, cuda::MeasureGemvChain(cfg.hidden_size, cfg.intermediate_size,
                                                                        qkv_width, cfg.num_layers, 20));
    std::printf("dense products alone (%d blocks of qkv, wo, gate/up, down at 1 token, graph, PDL): %.2f us a block "
                "staged, %.2f register GEMV\n",
                cfg.num_layers, g.staged_us, g.register_us);
  }

  // Prefill every sequence to `ctx` tokens, one sequence per Forward.
  std::mt19937 rng(1);
  std::vector<std::unique_ptr<Sequence>> seqs;
  const auto t_prefill = std::chrono::steady_clock::now();
  for (int b = 0; b < max_batch; ++b) {
    seqs.push_back(rt->engine->NewSequence());
    std::vector<int32_t> prompt(ctx);
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % cfg.vocab_size);
    SequenceInput in{seqs.back().get(), absl::MakeConstSpan(prompt), false};
    ForwardOutput out;
    UM_RETURN_IF_ERROR(rt->engine->Forward({&in, 1}, {}, &out));
  }
  const double prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_prefill).count();
  std::printf("model loaded in %.1f s; prefill of %d x %d tokens in %.2f s; copy bandwidth %.0f GB/s\n",
              load_s, max_batch, ctx, prefill_s, copy_bw / 1e9);

  const int64_t dense_bytes = rt->weights->DenseBytesPerToken() / 2;  // bf16 on the device
  const int J = cfg.NumMemoryLayers();
  const MemoryConfig* mc = cfg.memory ? &*cfg.memory : nullptr;
  std::printf("%6s %6s %10s %10s %12s %10s %10s %8s\n", "batch", "ctx", "eager_us", "graph_us",
              "forward_us", "floor_us", "floor_MB", "graph/fl");
  for (int B : batches) {
    std::vector<SequenceInput> ins(B);
    std::vector<int32_t> next(B);
    ForwardOutput out;
    // Two real steps (the first captures the graph), then Forward wall time over a few steps.
    std::vector<double> wall;
    for (int s = 0; s < 5; ++s) {
      for (int b = 0; b < B; ++b) {
        next[b] = static_cast<int32_t>(rng() % cfg.vocab_size);
        ins[b] = SequenceInput{seqs[b].get(), absl::MakeConstSpan(&next[b], 1), false};
      }
      const auto t0 = std::chrono::steady_clock::now();
      UM_RETURN_IF_ERROR(rt->engine->Forward(ins, {}, &out));
      wall.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(wall.begin() + 2, wall.end());
    const double forward_us = wall[3];
    UM_ASSIGN_OR_RETURN(double graph_us, CudaReplayLastStepMicros(rt->engine.get(), iters, true));
    UM_ASSIGN_OR_RETURN(double eager_us, CudaReplayLastStepMicros(rt->engine.get(), iters, false));
    if (B == 1 && cuda::GemvTraceEnabled()) PrintGemvTrace(rt->engine.get());
    if (cuda::TopMTraceEnabled()) PrintTopMTrace(rt->engine.get());
    if (absl::c_linear_search(timeline_batches, B)) {
      // Four replays back to back (three warm-up, one timed); the last, from its embedding kernel
      // on, follows a step as in the timings above.
      auto spans = cuda::RecordKernelTimeline(
          [&] { return CudaReplayLastStepMicros(rt->engine.get(), 1, true).status(); });
      if (!spans.ok()) {
        std::printf("timeline (batch %d): %s\n", B, std::string(spans.status().message()).c_str());
      } else {
        size_t first = 0;
        for (size_t i = 0; i < spans->size(); ++i) {
          if ((*spans)[i].name.rfind("EmbedKernel", 0) == 0) first = i;
        }
        std::vector<cuda::KernelSpan> last(spans->begin() + static_cast<std::ptrdiff_t>(first), spans->end());
        std::printf("timeline of one graph replay at batch %d (the last of four; CUPTI):\n%s", B,
                    cuda::FormatKernelTimeline(last).c_str());
      }
    }
    const int64_t ctx_now = seqs[0]->length();
    const int64_t kv_bytes = int64_t{B} * cfg.num_layers * 2 * ctx_now * cfg.num_key_value_heads *
                             cfg.head_dim * 2;
    const int64_t value_bytes =
        mc ? int64_t{B} * J * mc->SelectionsPerToken() * mc->value_dim * 2 : 0;
    const double floor_bytes = double(dense_bytes + kv_bytes + value_bytes);
    const double floor_us = floor_bytes / copy_bw * 1e6;  // copy_bw: bytes moved (read + write) per s
    std::printf("%6d %6lld %10.1f %10.1f %12.1f %10.1f %10.1f %8.2f\n", B,
                static_cast<long long>(ctx_now), eager_us, graph_us, forward_us, floor_us,
                floor_bytes / 1e6, graph_us / floor_us);
    std::printf("JSON {\"engine\":\"cuda\",\"batch\":%d,\"context\":%lld,\"eager_us\":%.1f,\"graph_us\":%.1f,"
                "\"forward_us\":%.1f,\"floor_us\":%.1f,\"floor_bytes\":%.0f,\"dense_bytes\":%lld,"
                "\"kv_bytes\":%lld,\"value_bytes\":%lld,\"copy_GBps\":%.0f}\n",
                B, static_cast<long long>(ctx_now), eager_us, graph_us, forward_us, floor_us,
                floor_bytes, static_cast<long long>(dense_bytes), static_cast<long long>(kv_bytes),
                static_cast<long long>(value_bytes), copy_bw / 1e9);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace ultramem

int main(int argc, char** argv) {
  return ultramem::RunTool(argc, argv, "ultramem-cuda-bench", ultramem::Run);
}
