// Bench (b): a decode-shaped Lookup (1 token, 2x32 selections, Dv 512, bf16 reply) over gRPC
// against an empty unary call (Ping) on the same server, over loopback TCP and over a unix:
// socket. Calls alternate one by one; prints p50/p99 of each and the ratios (target p50 <= 1.5x).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "bench/memory_server/bench_common.h"
#include "memory_server/memory_server.h"
#include "ultramem/v1/memory.grpc.pb.h"

using namespace ultramem::memory;
using Clock = std::chrono::steady_clock;

int main() {
  const int kCalls = 5000, kWarmup = 500;
  bench::BenchStore data(/*knum=*/128, /*value_dim=*/512);
  MemoryServerOptions options;
  options.listen_addresses = {"127.0.0.1:0", "unix:" + data.dir + "/bench.sock"};
  options.metrics_address = "";
  options.store_dir = data.store_dir;
  options.current_poll_ms = 0;
  auto server = MemoryServer::Start(options);
  if (!server.ok() || !(*server)->Load().ok()) return 1;
  std::vector<bench::Batch> batches =
      bench::MakeBatches(256, 1, 64, data.manifest.num_rows, 0, 3);
  std::vector<ultramem::v1::LookupRequest> requests;
  for (const auto& b : batches) requests.push_back(bench::ToRequest(b, true));
  std::printf("bench (b) decode-shaped Lookup vs empty unary call, same server, %d calls each, "
              "alternating (request %zu B, reply %d B)\n",
              kCalls, requests[0].ByteSizeLong(), 4 * 512 * 2);
  for (const std::string& address : (*server)->addresses()) {
    auto stub = ultramem::v1::MemoryService::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    std::vector<double> lookup_us, ping_us;
    for (int i = 0; i < kWarmup + kCalls; ++i) {
      ultramem::v1::LookupResponse response;
      grpc::ClientContext c1;
      auto t0 = Clock::now();
      if (!stub->Lookup(&c1, requests[i % requests.size()], &response).ok()) return 1;
      const double lookup = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      ultramem::v1::PingResponse pong;
      grpc::ClientContext c2;
      t0 = Clock::now();
      if (!stub->Ping(&c2, ultramem::v1::PingRequest(), &pong).ok()) return 1;
      const double ping = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      if (i >= kWarmup) {
        lookup_us.push_back(lookup);
        ping_us.push_back(ping);
      }
    }
    const double l50 = bench::Percentile(lookup_us, 50), l99 = bench::Percentile(lookup_us, 99);
    const double p50 = bench::Percentile(ping_us, 50), p99 = bench::Percentile(ping_us, 99);
    std::printf("  %-28s Lookup p50 %7.1f us p99 %7.1f us | empty p50 %7.1f us p99 %7.1f us | "
                "ratio p50 %.2fx p99 %.2fx\n",
                address.rfind("unix:", 0) == 0 ? "unix socket" : "loopback TCP", l50, l99, p50, p99,
                l50 / p50, l99 / p99);
  }
  (*server)->Shutdown();
  return 0;
}
