// Implementation of compute_node/serving/serving_metrics.h.
#include "compute_node/serving/serving_metrics.h"

#include "absl/status/status.h"
#include "common/prometheus_util.h"

namespace ultramem {

ServingMetrics::ServingMetrics(prometheus::Registry& r)
    : ttft_(AddHistogram(r, "ultramem_time_to_first_token_seconds", "Time from request arrival to its first token",
                      {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10})),
      itl_(AddHistogram(r, "ultramem_inter_token_latency_seconds", "Time between consecutive tokens of a request",
                     {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1})),
      e2e_(AddHistogram(r, "ultramem_e2e_request_latency_seconds", "Time from request arrival to its last token",
                     {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120})),
      running_(AddGauge(r, "ultramem_requests_running", "Requests in the running batch")),
      waiting_(AddGauge(r, "ultramem_requests_waiting", "Requests queued for a slot")),
      kv_usage_(AddGauge(r, "ultramem_kv_cache_usage_ratio",
                           "KV cache held by running requests over what max_running full-context requests need")),
      kv_bytes_(AddGauge(r, "ultramem_kv_cache_bytes", "KV cache bytes held by running requests")),
      prompt_tokens_(AddCounter(r, "ultramem_prompt_tokens_total", "Prompt tokens prefilled")),
      generation_tokens_(AddCounter(r, "ultramem_generation_tokens_total", "Tokens generated")),
      finished_(AddCounterFamily(r, "ultramem_requests_finished_total", "Requests finished, by finish reason")),
      errors_(AddCounterFamily(r, "ultramem_request_errors_total", "Requests refused or failed, by gRPC status code")) {}

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
