// The gateway's Prometheus metrics (names in docs/PROCESSES.md), built once on a registry and
// handed to the service and the backend pool. Thread safe.
#pragma once

#include <map>
#include <string>

#include "absl/status/status.h"
#include "common/prometheus_util.h"
#include "absl/synchronization/mutex.h"
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
  void CountRequest(absl::StatusCode code) { requests_.Count(code); }
  // ultramem_gateway_backend_requests_total{backend}: calls sent to one backend (retries count
  // again). The labels are the backends known now (fixed addresses as configured, resolved ones
  // as "ip:port"): each Backend acquires its counter and releases it when destroyed, and the
  // series is dropped when the last holder releases it (an address that comes back starts at 0).
  prometheus::Counter& AcquireBackendRequests(const std::string& backend);
  void ReleaseBackendRequests(const std::string& backend);

  // ultramem_gateway_requests_in_flight: Chat streams being served.
  prometheus::Gauge& requests_in_flight;
  // ultramem_gateway_request_latency_seconds: Chat from arrival to the last chunk (or error).
  prometheus::Histogram& request_latency;
  // ultramem_gateway_time_to_first_token_seconds: Chat from arrival to the first chunk relayed.
  prometheus::Histogram& time_to_first_token;
  // ultramem_gateway_backends_healthy: backends healthy at the last poll.
  prometheus::Gauge& backends_healthy;
  // ultramem_gateway_backends_known: backends known now (fixed addresses and those resolved).
  prometheus::Gauge& backends_known;

 private:
  StatusCodeCounters requests_;
  prometheus::Family<prometheus::Counter>& backend_requests_;
  absl::Mutex backend_mu_;
  std::map<std::string, int> backend_holders_ ABSL_GUARDED_BY(backend_mu_);
};

// "OK", "INVALID_ARGUMENT", ... for a gRPC/absl code; "UNKNOWN" outside the known set.
std::string StatusCodeName(absl::StatusCode code);

}  // namespace ultramem::services
