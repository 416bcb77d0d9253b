// Small builders for Prometheus metrics (prometheus-cpp), shared by the memory server, the
// compute node's serving metrics and the gateway: one unlabeled series in a family of its own, a
// labeled family, and doubling histogram buckets. Header-only: a target that includes it links
// prometheus-cpp::core itself.
#pragma once

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

#include <string>

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

}  // namespace ultramem
