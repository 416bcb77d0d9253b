// Small builders for Prometheus metrics (prometheus-cpp), shared by the memory server, the
// compute node's serving metrics and the gateway: one unlabeled series in a family of its own, a
// labeled family, doubling histogram buckets, and a counter per gRPC status code. Header-only: a
// target that includes it links prometheus-cpp::core (and absl::status) itself.
#pragma once

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

#include <array>
#include <string>

#include "absl/status/status.h"

namespace ultramem {

// first, 2·first, 4·first, ... while below `limit`.
inline prometheus::Histogram::BucketBoundaries DoublingBuckets(double first, double limit) {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = first; v < limit; v *= 2) b.push_back(v);
  return b;
}

inline prometheus::Gauge& AddGauge(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

inline prometheus::Counter& AddCounter(prometheus::Registry& r, const std::string& name,
                                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

inline prometheus::Histogram& AddHistogram(prometheus::Registry& r, const std::string& name,
                                           const std::string& help,
                                           const prometheus::Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

// A family whose series the caller adds by label.
inline prometheus::Family<prometheus::Counter>& AddCounterFamily(prometheus::Registry& r, const std::string& name,
                                                                 const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}
inline prometheus::Family<prometheus::Gauge>& AddGaugeFamily(prometheus::Registry& r, const std::string& name,
                                                             const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

// A counter family labeled {code} with the gRPC status names, one series for every code from
// `first` (0: OK too, 1: errors only) to UNAUTHENTICATED (16), added up front so that each shows
// from the start and counting takes no label lookup. A code outside 0..16 counts as UNKNOWN; one
// below `first` is not counted.
class StatusCodeCounters {
 public:
  StatusCodeCounters(prometheus::Registry& r, const std::string& name, const std::string& help, int first)
      : family_(AddCounterFamily(r, name, help)) {
    for (int i = first; i < kCodes; ++i) {
      counters_[i] = &family_.Add({{"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(i))}});
    }
  }
  void Count(absl::StatusCode code) {
    int i = static_cast<int>(code);
    if (i < 0 || i >= kCodes) i = static_cast<int>(absl::StatusCode::kUnknown);
    if (counters_[i] != nullptr) counters_[i]->Increment();
  }

 private:
  static constexpr int kCodes = 17;
  prometheus::Family<prometheus::Counter>& family_;
  std::array<prometheus::Counter*, kCodes> counters_{};
};

}  // namespace ultramem
