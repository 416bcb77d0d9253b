// Implementation of services/gateway_metrics.h.
#include "services/gateway_metrics.h"

namespace ultramem::services {
namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  // 1 ms .. ~130 s, ×2 steps: first tokens sit at the bottom, long generations at the top.
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 1e-3; v < 140.0; v *= 2) b.push_back(v);
  return b;
}

}  // namespace

const char* StatusCodeName(absl::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return (i >= 0 && i < 17) ? kNames[i] : "UNKNOWN";
}

GatewayMetrics::GatewayMetrics(prometheus::Registry& registry)
    : requests_in_flight(prometheus::BuildGauge()
                             .Name("ultramem_gateway_requests_in_flight")
                             .Help("Chat streams being served by the gateway")
                             .Register(registry)
                             .Add({})),
      request_latency(prometheus::BuildHistogram()
                          .Name("ultramem_gateway_request_latency_seconds")
                          .Help("Chat latency at the gateway, from arrival to the end of the stream")
                          .Register(registry)
                          .Add({}, LatencyBuckets())),
      time_to_first_token(prometheus::BuildHistogram()
                              .Name("ultramem_gateway_time_to_first_token_seconds")
                              .Help("Time from a Chat's arrival to its first chunk relayed")
                              .Register(registry)
                              .Add({}, LatencyBuckets())),
      backends_healthy(prometheus::BuildGauge()
                           .Name("ultramem_gateway_backends_healthy")
                           .Help("Compute nodes healthy at the last poll")
                           .Register(registry)
                           .Add({})),
      backends_known(prometheus::BuildGauge()
                         .Name("ultramem_gateway_backends_known")
                         .Help("Compute nodes known now: fixed addresses and those resolved from names")
                         .Register(registry)
                         .Add({})),
      requests_(prometheus::BuildCounter()
                    .Name("ultramem_gateway_requests_total")
                    .Help("Chat and ListModels calls by final gRPC status code")
                    .Register(registry)),
      backend_requests_(prometheus::BuildCounter()
                            .Name("ultramem_gateway_backend_requests_total")
                            .Help("Calls forwarded to each compute node (retries included)")
                            .Register(registry)) {
  for (int i = 0; i < 17; ++i) {
    request_counters_[i] =
        &requests_.Add({{"code", StatusCodeName(static_cast<absl::StatusCode>(i))}});
  }
}

void GatewayMetrics::CountRequest(absl::StatusCode code) {
  const int i = static_cast<int>(code);
  request_counters_[(i >= 0 && i < 17) ? i : 2]->Increment();
}

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
