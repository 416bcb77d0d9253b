// The compute node's Prometheus metrics, named as users know them from vLLM (docs/PROCESSES.md).
// Built once per registry and injected; every method is thread safe.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ultramem {

class ServingMetrics {
 public:
  explicit ServingMetrics(prometheus::Registry& registry);

  void RequestStarted(int prompt_tokens);
  void FirstToken(double seconds_since_arrival);
  void NextToken(double seconds_since_previous);
  // reason: "stop", "length", "cancelled", "error".
  void RequestFinished(const std::string& reason, double e2e_seconds);
  void RequestError(absl::StatusCode code);
  void SetLoad(int running, int waiting, int64_t kv_cache_bytes, double kv_cache_usage);

 private:
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_usage_;
  prometheus::Gauge& kv_bytes_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& errors_;
};

}  // namespace ultramem
