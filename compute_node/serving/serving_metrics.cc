// Implementation of compute_node/serving/serving_metrics.h.
#include "compute_node/serving/serving_metrics.h"

#include "absl/status/status.h"

namespace ultramem {
namespace {

using prometheus::Histogram;

Histogram& BuildHist(prometheus::Registry& r, const std::string& name, const std::string& help,
                     const Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}
prometheus::Gauge& BuildGauge(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
prometheus::Counter& BuildCounter(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

ServingMetrics::ServingMetrics(prometheus::Registry& r)
    : ttft_(BuildHist(r, "ultramem_time_to_first_token_seconds", "Time from request arrival to its first token",
                      {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10})),
      itl_(BuildHist(r, "ultramem_inter_token_latency_seconds", "Time between consecutive tokens of a request",
                     {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1})),
      e2e_(BuildHist(r, "ultramem_e2e_request_latency_seconds", "Time from request arrival to its last token",
                     {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120})),
      running_(BuildGauge(r, "ultramem_requests_running", "Requests in the running batch")),
      waiting_(BuildGauge(r, "ultramem_requests_waiting", "Requests queued for a slot")),
      kv_usage_(BuildGauge(r, "ultramem_kv_cache_usage_ratio",
                           "KV cache held by running requests over what max_running full-context requests need")),
      kv_bytes_(BuildGauge(r, "ultramem_kv_cache_bytes", "KV cache bytes held by running requests")),
      prompt_tokens_(BuildCounter(r, "ultramem_prompt_tokens_total", "Prompt tokens prefilled")),
      generation_tokens_(BuildCounter(r, "ultramem_generation_tokens_total", "Tokens generated")),
      finished_(prometheus::BuildCounter().Name("ultramem_requests_finished_total")
                    .Help("Requests finished, by finish reason").Register(r)),
      errors_(prometheus::BuildCounter().Name("ultramem_request_errors_total")
                  .Help("Requests refused or failed, by gRPC status code").Register(r)) {}

void ServingMetrics::RequestStarted(int prompt_tokens) { prompt_tokens_.Increment(prompt_tokens); }
void ServingMetrics::FirstToken(double s) {
  ttft_.Observe(s);
  generation_tokens_.Increment();
}
void ServingMetrics::NextToken(double s) {
  itl_.Observe(s);
  generation_tokens_.Increment();
}
void ServingMetrics::RequestFinished(const std::string& reason, double e2e_seconds) {
  finished_.Add({{"finish_reason", reason}}).Increment();
  e2e_.Observe(e2e_seconds);
}
void ServingMetrics::RequestError(absl::StatusCode code) {
  errors_.Add({{"code", absl::StatusCodeToString(code)}}).Increment();
}
void ServingMetrics::SetLoad(int running, int waiting, int64_t kv_cache_bytes, double kv_cache_usage) {
  running_.Set(running);
  waiting_.Set(waiting);
  kv_bytes_.Set(static_cast<double>(kv_cache_bytes));
  kv_usage_.Set(kv_cache_usage);
}

}  // namespace ultramem
