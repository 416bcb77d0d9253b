// ultramem-memory-server: serves one shard's store over gRPC until SIGTERM (drains, exits 0).
// SIGHUP re-reads CURRENT and switches versions. Prints "LISTENING grpc=... metrics=PORT" and then
// "SERVING version=V" on stdout for whoever started it.
#include <signal.h>

#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "common/file_util.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/flags_util.h"
#include "common/signals.h"
#include "common/log.h"
#include "memory_server/memory_server.h"

ABSL_FLAG(std::string, store_dir, "", "store directory written by ultramem-import");
ABSL_FLAG(std::string, version, "", "store version to serve (default: follow CURRENT)");
ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "gRPC addresses, comma separated (host:port, unix:path)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9470", "Prometheus host:port; empty disables");
ABSL_FLAG(std::string, device, "cpu", "where hot rows live and are pooled: cpu, cuda or cuda:N");
ABSL_FLAG(int64_t, hot_capacity_bytes, 4ll << 30,
          "hot-tier bytes (of --device's memory); a shard that fits is preloaded");
ABSL_FLAG(int32_t, gpu_streams, 4, "with --device=cuda: lookups on the GPU at once (streams)");
ABSL_FLAG(int64_t, block_cache_bytes, 256ll << 20, "RocksDB block cache bytes");
ABSL_FLAG(int32_t, bloom_bits_per_key, 10, "RocksDB bloom filter bits per key");
ABSL_FLAG(uint32_t, max_batch_tokens, 1024, "tokens per Lookup; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(uint32_t, max_batch_selections, 1u << 18, "selections per Lookup");
ABSL_FLAG(int32_t, max_in_flight, 4096, "Lookups served at once; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, cold_threads, 8, "threads serving Lookups that read RocksDB");
ABSL_FLAG(int64_t, drain_timeout_ms, 30000, "how long SIGTERM waits for in-flight calls");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(int64_t, current_poll_ms, 1000, "how often CURRENT is checked (0: only on SIGHUP)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Serves a memory-server store over gRPC.");
  ultramem::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  // Signals go to this thread, which waits for them; every other thread inherits the mask.
  const sigset_t signals = ultramem::BlockSignals({SIGTERM, SIGINT, SIGHUP});

  ultramem::memory::MemoryServerOptions options;
  options.store_dir = absl::GetFlag(FLAGS_store_dir);
  options.version = absl::GetFlag(FLAGS_version);
  options.listen_addresses = absl::StrSplit(absl::GetFlag(FLAGS_listen), ',', absl::SkipEmpty());
  options.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  options.store.device = absl::GetFlag(FLAGS_device);
  options.store.hot_capacity_bytes = absl::GetFlag(FLAGS_hot_capacity_bytes);
  options.store.gpu_streams = absl::GetFlag(FLAGS_gpu_streams);
  options.store.cold.block_cache_bytes = absl::GetFlag(FLAGS_block_cache_bytes);
  options.store.cold.bloom_bits_per_key = absl::GetFlag(FLAGS_bloom_bits_per_key);
  options.limits.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  options.limits.max_batch_selections = absl::GetFlag(FLAGS_max_batch_selections);
  options.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  options.cold_threads = absl::GetFlag(FLAGS_cold_threads);
  options.drain_timeout_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  options.current_poll_ms = absl::GetFlag(FLAGS_current_poll_ms);

  for (auto [flag, out] : {std::pair{absl::GetFlag(FLAGS_tls_cert), &options.tls_cert_pem},
                           std::pair{absl::GetFlag(FLAGS_tls_key), &options.tls_key_pem},
                           std::pair{absl::GetFlag(FLAGS_tls_client_ca), &options.tls_client_ca_pem}}) {
    absl::StatusOr<std::string> pem = ultramem::ReadFileOrEmpty(flag);
    if (!pem.ok()) {
      UM_LOG_ERROR(pem.status().ToString());
      return 2;
    }
    *out = *std::move(pem);
  }
  auto server = ultramem::memory::MemoryServer::Start(options);
  if (!server.ok()) {
    UM_LOG_ERROR("cannot start: ", server.status().ToString());
    return 1;
  }
  std::printf("LISTENING grpc=%s metrics=%d\n", absl::StrJoin((*server)->addresses(), ",").c_str(),
              (*server)->metrics_port());
  std::fflush(stdout);
  absl::Status loaded = (*server)->Load();
  if (!loaded.ok()) {
    UM_LOG_ERROR("cannot load the store: ", loaded.ToString());
    (*server)->Shutdown();
    return 1;
  }
  std::printf("SERVING version=%s\n", (*server)->version().c_str());
  std::fflush(stdout);

  for (;;) {
    const int signal = ultramem::WaitForSignal(signals);
    if (signal == SIGHUP) {
      absl::Status reloaded = (*server)->Reload();
      if (!reloaded.ok()) UM_LOG_WARNING("reload: ", reloaded.ToString());
      continue;
    }
    UM_LOG_INFO("signal ", signal, ": draining");
    break;
  }
  (*server)->Shutdown();
  return 0;
}
