// Bench (d): the GPU hot tier against the CPU hot tier through gRPC. Two in-process servers on
// one synthetic store (both fully hot), decode-shaped Lookups (T tokens × 64 selections, Dv 512,
// bf16 replies) over unix sockets, calls alternating between the servers; prints p50/p99 per T
// and checks that both answer the same (max |gpu - cpu| <= 1e-5 · max |cpu|, bf16-rounded).
// With --connect it times a running server instead (e.g. a 77 GB synthetic shard on a GPU) and,
// given --verify_seed, checks single-row lookups against the synthetic function.
//
//   memory_server_gpu_tier_bench [--knum 1024] [--tokens 1,64,256] [--calls 300]
//   memory_server_gpu_tier_bench --connect unix:/tmp/ms.sock [--verify_seed 7 --verify_scale 1]
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/memory_server/bench_common.h"
#include "common/dtype.h"
#include "common/synthetic_values.h"
#include "memory_server/memory_server.h"
#include "ultramem/v1/memory.grpc.pb.h"

ABSL_FLAG(int, knum, 1024, "rows = knum² (1024: 1M rows, 1 GiB of bf16 at Dv 512)");
ABSL_FLAG(int, value_dim, 512, "Dv");
ABSL_FLAG(std::string, tokens, "1,64,256", "tokens per Lookup to time");
ABSL_FLAG(int, calls, 300, "timed calls per server and token count (after 30 warm-up calls)");
ABSL_FLAG(std::string, connect, "", "time this running server instead of starting two");
ABSL_FLAG(int64_t, verify_seed, -1, "with --connect: check rows against this synthetic seed");
ABSL_FLAG(double, verify_scale, 1.0, "with --verify_seed: the synthetic scale");

using namespace ultramem::memory;
namespace v1 = ultramem::v1;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<float> Values(const v1::LookupResponse& r) {
  std::vector<float> out(r.y().size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t v;
    std::memcpy(&v, r.y().data() + 2 * i, 2);
    out[i] = ultramem::Bf16ToF32(v);
  }
  return out;
}

bool Call(v1::MemoryService::Stub& stub, const v1::LookupRequest& req, v1::LookupResponse* resp,
          double* us) {
  grpc::ClientContext context;
  const auto t0 = Clock::now();
  grpc::Status s = stub.Lookup(&context, req, resp);
  *us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  if (!s.ok()) std::fprintf(stderr, "Lookup: %s\n", s.error_message().c_str());
  return s.ok();
}

std::vector<int> TokenCounts() {
  std::vector<int> out;
  for (auto piece : absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',')) {
    int t;
    if (absl::SimpleAtoi(piece, &t) && t > 0) out.push_back(t);
  }
  return out;
}

// Times --connect's server; checks rows against the synthetic function when asked.
int RunConnected(const std::string& address) {
  auto stub =
      v1::MemoryService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::InfoResponse info;
  {
    grpc::ClientContext context;
    grpc::Status s = stub->Info(&context, v1::InfoRequest(), &info);
    if (!s.ok()) {
      std::fprintf(stderr, "Info: %s\n", s.error_message().c_str());
      return 1;
    }
  }
  const auto& b = info.blocks(0);
  const int width = static_cast<int>(b.col_end() - b.col_begin());
  std::printf("server %s: model %s, %d blocks of %lld rows x %d cols, hot tier %s, %.1f GB hot\n",
              address.c_str(), info.model_id().c_str(), info.blocks_size(),
              static_cast<long long>(b.row_end() - b.row_begin()), width, info.hot_tier().c_str(),
              info.hot_bytes() / 1e9);
  const int64_t rows = b.row_end() - b.row_begin();
  if (absl::GetFlag(FLAGS_verify_seed) >= 0) {
    // 256 tokens, each one row of weight 1 in group t % E: Y[t, t % E] is the row itself.
    const ultramem::SyntheticValues spec{static_cast<uint64_t>(absl::GetFlag(FLAGS_verify_seed)),
                                         static_cast<float>(absl::GetFlag(FLAGS_verify_scale))};
    bench::Batch batch;
    batch.num_tokens = 256;
    std::mt19937_64 rng(1);
    for (int t = 0; t < 256; ++t) {
      batch.rows.push_back(b.row_begin() + static_cast<int64_t>(rng() % rows));
      batch.groups.push_back(t % info.expand());
      batch.weights.insert(batch.weights.end(), {1.0f, 1.0f});
    }
    v1::LookupRequest req = bench::ToRequest(batch, false);
    req.set_layer(b.layer());
    v1::LookupResponse resp;
    double us;
    if (!Call(*stub, req, &resp, &us)) return 1;
    const float* y = reinterpret_cast<const float*>(resp.y().data());
    std::vector<uint16_t> row(width);
    int64_t wrong = 0;
    for (int t = 0; t < 256; ++t) {
      ultramem::FillSyntheticBf16(spec, static_cast<int>(b.layer()), batch.rows[t],
                                  batch.rows[t] + 1, static_cast<int>(b.col_begin()),
                                  static_cast<int>(b.col_end()), row.data());
      for (int c = 0; c < width; ++c) {
        wrong += y[(static_cast<size_t>(t) * info.expand() + t % info.expand()) * width + c] !=
                 ultramem::Bf16ToF32(row[c]);
      }
    }
    std::printf(
        "verify: 256 random rows read back through the server: %lld values differ from "
        "the synthetic function\n",
        static_cast<long long>(wrong));
    if (wrong != 0) return 1;
  }
  std::printf("%8s %12s %12s\n", "tokens", "p50 us", "p99 us");
  for (int T : TokenCounts()) {
    auto batches = bench::MakeBatches(64, T, 64, rows, 0, 7 + T);
    for (auto& batch : batches) {
      for (int64_t& row : batch.rows) row += b.row_begin();
    }
    std::vector<double> us;
    for (int i = 0; i < 30 + absl::GetFlag(FLAGS_calls); ++i) {
      v1::LookupRequest req = bench::ToRequest(batches[i % batches.size()], true);
      req.set_layer(b.layer());
      v1::LookupResponse resp;
      double t;
      if (!Call(*stub, req, &resp, &t)) return 1;
      if (i >= 30) us.push_back(t);
    }
    const double p50 = bench::Percentile(us, 50), p99 = bench::Percentile(us, 99);
    std::printf("%8d %12.1f %12.1f\n", T, p50, p99);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_connect).empty()) return RunConnected(absl::GetFlag(FLAGS_connect));
  const auto t0 = Clock::now();
  bench::BenchStore data(absl::GetFlag(FLAGS_knum), absl::GetFlag(FLAGS_value_dim), /*seed=*/7);
  std::printf(
      "bench (d) GPU vs CPU hot tier through gRPC (unix socket): synthetic store of %lld "
      "rows x %d bf16 (%.2f GB), 64 selections a token, bf16 replies\n",
      static_cast<long long>(data.manifest.num_rows), data.manifest.value_dim,
      data.manifest.TotalBytes() / 1e9);
  std::unique_ptr<MemoryServer> servers[2];
  const char* names[2] = {"cpu", "cuda"};
  for (int i = 0; i < 2; ++i) {
    MemoryServerOptions options;
    options.listen_addresses = {"unix:" + data.dir + "/" + names[i] + ".sock"};
    options.metrics_address = "";
    options.store_dir = data.store_dir;
    options.current_poll_ms = 0;
    options.store.device = names[i];
    options.store.hot_capacity_bytes = data.manifest.TotalBytes();
    const auto start = Clock::now();
    auto server = MemoryServer::Start(options);
    absl::Status loaded = server.ok() ? (*server)->Load() : server.status();
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s server: %s\n", names[i], loaded.ToString().c_str());
      return 1;
    }
    std::printf("  %s server loaded in %.2f s\n", names[i],
                std::chrono::duration<double>(Clock::now() - start).count());
    servers[i] = std::move(*server);
  }
  std::unique_ptr<v1::MemoryService::Stub> stubs[2];
  for (int i = 0; i < 2; ++i) {
    stubs[i] = v1::MemoryService::NewStub(
        grpc::CreateChannel(servers[i]->addresses()[0], grpc::InsecureChannelCredentials()));
  }
  std::printf("%8s %14s %14s %14s %14s %9s %12s\n", "tokens", "cpu p50 us", "cpu p99 us",
              "gpu p50 us", "gpu p99 us", "cpu/gpu", "max rel err");
  int status = 0;
  for (int T : TokenCounts()) {
    auto batches = bench::MakeBatches(64, T, 64, data.manifest.num_rows, 0, 11 + T);
    std::vector<double> us[2];
    double worst = 0;
    for (int i = 0; i < 30 + absl::GetFlag(FLAGS_calls); ++i) {
      const v1::LookupRequest req = bench::ToRequest(batches[i % batches.size()], true);
      v1::LookupResponse resp[2];
      for (int s = 0; s < 2; ++s) {
        double t;
        if (!Call(*stubs[s], req, &resp[s], &t)) return 1;
        if (i >= 30) us[s].push_back(t);
      }
      if (i < static_cast<int>(batches.size())) {
        const auto a = Values(resp[0]), g = Values(resp[1]);
        double diff = 0, scale = 1e-30;
        for (size_t k = 0; k < a.size(); ++k) {
          diff = std::max(diff, std::abs(double(a[k]) - g[k]));
          scale = std::max(scale, std::abs(double(a[k])));
        }
        worst = std::max(worst, diff / scale);
      }
    }
    const double c50 = bench::Percentile(us[0], 50), c99 = bench::Percentile(us[0], 99);
    const double g50 = bench::Percentile(us[1], 50), g99 = bench::Percentile(us[1], 99);
    // bf16 replies: a different fp32 rounding can flip the last bf16 bit (2^-8 relative).
    if (worst > 1e-2) status = 1;
    std::printf("%8d %14.1f %14.1f %14.1f %14.1f %8.2fx %12.2g\n", T, c50, c99, g50, g99, c50 / g50,
                worst);
  }
  for (auto& s : servers) s->Shutdown();
  std::printf("total %.1f s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  return status;
}
