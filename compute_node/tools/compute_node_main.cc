// ultramem-compute-node: serves ultramem.v1.ChatService for one model (docs/PROCESSES.md).
//
//   ultramem-compute-node --model DIR [--shard-map FILE] --listen 127.0.0.1:7100
//                         --metrics-listen 127.0.0.1:9100 [--max-running 32] [--max-waiting 256]
#include <pthread.h>
#include <signal.h>

#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/flags_util.h"
#include "common/signals.h"
#include "common/log.h"
#include "compute_node/serving/compute_server.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json + safetensors)");
ABSL_FLAG(std::string, model_name, "", "name clients use (default: the directory's name)");
ABSL_FLAG(std::string, shard_map, "", "shard map (protobuf text): memory layers on memory servers");
ABSL_FLAG(std::string, listen, "127.0.0.1:7100", "gRPC addresses, comma separated (host:port, unix:path)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9100", "Prometheus host:port; empty disables");
ABSL_FLAG(int, max_running, 32, "requests decoded together");
ABSL_FLAG(int, max_waiting, 256, "queued requests; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_prefill_tokens, 256, "prompt tokens prefilled per engine step");
ABSL_FLAG(int, default_max_tokens, 256, "max_tokens when a request leaves it 0");
ABSL_FLAG(int, health_interval_ms, 1000, "how often memory shards are probed for the health status");
ABSL_FLAG(int, threads, 0, "CPU threads (0: one per core)");
ABSL_FLAG(std::string, backend, "cpu", "engine backend: cpu, or cuda when built with CUDA");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate for clients (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA: clients must present a certificate it signed");
ABSL_FLAG(std::string, memory_tls_ca, "", "PEM CA of the memory servers (enables TLS to them)");
ABSL_FLAG(std::string, memory_tls_cert, "", "PEM client certificate for mutual TLS to memory servers");
ABSL_FLAG(std::string, memory_tls_key, "", "PEM private key of --memory-tls-cert");

namespace {
// The PEM file's contents ("" for no path); exits with a message when it cannot be read.
std::string ReadFileOrDie(const std::string& path) {
  absl::StatusOr<std::string> text = ultramem::ReadFileOrEmpty(path);
  if (!text.ok()) {
    std::fprintf(stderr, "ultramem-compute-node: %s\n", text.status().ToString().c_str());
    std::exit(2);
  }
  return *text;
}
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ultramem-compute-node --model DIR [--shard-map FILE] [--listen ADDR]");
  ultramem::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const sigset_t signals = ultramem::BlockSignals({SIGTERM, SIGINT});

  ultramem::ComputeServerOptions o;
  o.runtime.model_dir = absl::GetFlag(FLAGS_model);
  o.runtime.shard_map_path = absl::GetFlag(FLAGS_shard_map);
  o.runtime.engine.num_threads = absl::GetFlag(FLAGS_threads);
  o.runtime.engine.backend = absl::GetFlag(FLAGS_backend);
  o.runtime.remote.root_certs_pem = ReadFileOrDie(absl::GetFlag(FLAGS_memory_tls_ca));
  o.runtime.remote.client_cert_pem = ReadFileOrDie(absl::GetFlag(FLAGS_memory_tls_cert));
  o.runtime.remote.client_key_pem = ReadFileOrDie(absl::GetFlag(FLAGS_memory_tls_key));
  o.model_name = absl::GetFlag(FLAGS_model_name);
  o.listen_addresses = absl::StrSplit(absl::GetFlag(FLAGS_listen), ',', absl::SkipEmpty());
  o.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  o.scheduler.max_running = absl::GetFlag(FLAGS_max_running);
  o.scheduler.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  o.scheduler.max_prefill_tokens = absl::GetFlag(FLAGS_max_prefill_tokens);
  o.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  o.health_interval_ms = absl::GetFlag(FLAGS_health_interval_ms);
  o.tls_cert_pem = ReadFileOrDie(absl::GetFlag(FLAGS_tls_cert));
  o.tls_key_pem = ReadFileOrDie(absl::GetFlag(FLAGS_tls_key));
  o.tls_client_ca_pem = ReadFileOrDie(absl::GetFlag(FLAGS_tls_client_ca));
  if (o.runtime.model_dir.empty()) {
    std::fprintf(stderr, "ultramem-compute-node: --model is required\n");
    return 2;
  }
  auto server = ultramem::ComputeServer::Start(std::move(o));
  if (!server.ok()) {
    UM_LOG_ERROR("cannot start: ", server.status().ToString());
    return 1;
  }
  std::printf("LISTENING grpc=%s metrics=%d\n", absl::StrJoin((*server)->addresses(), ",").c_str(),
              (*server)->metrics_port());
  std::printf("SERVING\n");
  std::fflush(stdout);
  const int signal = ultramem::WaitForSignal(signals);
  UM_LOG_INFO("signal ", signal, ": draining");
  (*server)->Shutdown();
  return 0;
}
