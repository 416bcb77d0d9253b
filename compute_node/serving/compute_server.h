// A compute node process: the model runtime, the continuous-batching scheduler and
// ultramem.v1.ChatService on gRPC, with health, reflection and Prometheus metrics.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compute_node/model_runtime.h"
#include "compute_node/serving/scheduler.h"

namespace ultramem {

struct ComputeServerOptions {
  ModelRuntimeOptions runtime;
  std::string model_name;                  // empty: the model directory's name
  std::vector<std::string> listen_addresses = {"127.0.0.1:7100"};  // port 0 picks one
  std::string metrics_address = "127.0.0.1:9100";  // empty disables
  SchedulerOptions scheduler;
  int default_max_tokens = 256;
  int health_interval_ms = 1000;           // how often memory shards are probed for health
  // TLS for clients (PEM contents); client_ca_pem set: clients must present a certificate.
  std::string tls_cert_pem, tls_key_pem, tls_client_ca_pem;
};

class ComputeServer {
 public:
  // Loads the model, connects to memory servers (with a shard map), binds the ports and starts
  // serving. Health is SERVING once every memory block has a live replica.
  static absl::StatusOr<std::unique_ptr<ComputeServer>> Start(ComputeServerOptions options);
  ~ComputeServer();

  const std::vector<std::string>& addresses() const;
  int metrics_port() const;
  // Health NOT_SERVING, stop accepting, cancel queued and running requests, wait for streams to
  // finish (bounded), stop. Idempotent.
  void Shutdown();

  class Impl;

 private:
  explicit ComputeServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ultramem
