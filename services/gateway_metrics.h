// The gateway's Prometheus metrics (names in docs/PROCESSES.md), built once on a registry and
// handed to the service and the backend pool. Thread safe.
#pragma once

#include <array>
#include <string>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ultramem::services {

class GatewayMetrics {
 public:
  explicit GatewayMetrics(prometheus::Registry& registry);

  // ultramem_gateway_requests_total{code}: Chat and ListModels calls by final gRPC code name.
  void CountRequest(absl::StatusCode code);
  // ultramem_gateway_backend_requests_total{backend}: calls sent to one backend (retries count
  // again). The set of labels is the configured backends.
  prometheus::Counter& BackendRequests(const std::string& backend);

  // ultramem_gateway_requests_in_flight: Chat streams being served.
  prometheus::Gauge& requests_in_flight;
  // ultramem_gateway_request_latency_seconds: Chat from arrival to the last chunk (or error).
  prometheus::Histogram& request_latency;
  // ultramem_gateway_time_to_first_token_seconds: Chat from arrival to the first chunk relayed.
  prometheus::Histogram& time_to_first_token;
  // ultramem_gateway_backends_healthy: backends healthy at the last poll.
  prometheus::Gauge& backends_healthy;

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& backend_requests_;
  std::array<prometheus::Counter*, 17> request_counters_{};
};

// "OK", "INVALID_ARGUMENT", ... for a gRPC/absl code; "UNKNOWN" outside the known set.
const char* StatusCodeName(absl::StatusCode code);

}  // namespace ultramem::services
