// Implementation of services/gateway_metrics.h.
#include "services/gateway_metrics.h"

#include "common/prometheus_util.h"

namespace ultramem::services {

std::string StatusCodeName(absl::StatusCode code) {
  const std::string name = absl::StatusCodeToString(code);
  return name.empty() ? "UNKNOWN" : name;
}

// Latencies 1 ms .. ~130 s: first tokens sit at the bottom, long generations at the top.
GatewayMetrics::GatewayMetrics(prometheus::Registry& registry)
    : requests_in_flight(AddGauge(registry, "ultramem_gateway_requests_in_flight",
                                  "Chat streams being served by the gateway")),
      request_latency(AddHistogram(registry, "ultramem_gateway_request_latency_seconds",
                                   "Chat latency at the gateway, from arrival to the end of the stream",
                                   DoublingBuckets(1e-3, 140.0))),
      time_to_first_token(AddHistogram(registry, "ultramem_gateway_time_to_first_token_seconds",
                                       "Time from a Chat's arrival to its first chunk relayed",
                                       DoublingBuckets(1e-3, 140.0))),
      backends_healthy(AddGauge(registry, "ultramem_gateway_backends_healthy", "Compute nodes healthy at the last poll")),
      backends_known(AddGauge(registry, "ultramem_gateway_backends_known",
                              "Compute nodes known now: fixed addresses and those resolved from names")),
      requests_(registry, "ultramem_gateway_requests_total", "Chat and ListModels calls by final gRPC status code",
                0),
      backend_requests_(AddCounterFamily(registry, "ultramem_gateway_backend_requests_total",
                                         "Calls forwarded to each compute node (retries included)")) {}

prometheus::Counter& GatewayMetrics::AcquireBackendRequests(const std::string& backend) {
  absl::MutexLock lock(&backend_mu_);
  ++backend_holders_[backend];
  return backend_requests_.Add({{"backend", backend}});
}

void GatewayMetrics::ReleaseBackendRequests(const std::string& backend) {
  absl::MutexLock lock(&backend_mu_);
  auto it = backend_holders_.find(backend);
  if (it == backend_holders_.end() || --it->second > 0) return;
  backend_holders_.erase(it);
  backend_requests_.Remove(&backend_requests_.Add({{"backend", backend}}));
}

}  // namespace ultramem::services
