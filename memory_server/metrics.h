// The memory server's Prometheus metrics, built once on a registry and handed to the store and the
// service. Thread safe.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "common/prometheus_util.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ultramem::memory {

class MemoryMetrics {
 private:
  prometheus::Family<prometheus::Counter>& rows_family_;  // first: rows_hot/rows_cold use it

 public:
  explicit MemoryMetrics(prometheus::Registry& registry);

  // ultramem_memory_lookup_latency_seconds: Lookup RPC time, from decode to reply.
  prometheus::Histogram& lookup_latency;
  // ultramem_memory_rocksdb_read_latency_seconds: one batched cold read (MultiGet) of a lookup.
  prometheus::Histogram& rocksdb_read_latency;
  // ultramem_memory_gpu_pool_latency_seconds: GPU hot tier only: one lookup's H2D copy, kernel
  // and D2H copy as the host waited for them (no samples with --device=cpu).
  prometheus::Histogram& gpu_pool_latency;
  // ultramem_memory_rows_served_total{tier="hot"|"cold"}: selections served, by tier (cold:
  // read from RocksDB, or computed for a synthetic store).
  prometheus::Counter& rows_hot;
  prometheus::Counter& rows_cold;
  // ultramem_memory_hot_hit_ratio: hot / (hot + cold) selections since start.
  prometheus::Gauge& hot_hit_ratio;
  // ultramem_memory_hot_bytes / ultramem_memory_hot_capacity_bytes: hot-tier use and capacity.
  prometheus::Gauge& hot_bytes;
  prometheus::Gauge& hot_capacity_bytes;
  // ultramem_memory_requests_in_flight: Lookup calls being served.
  prometheus::Gauge& requests_in_flight;
  // ultramem_memory_store_info{version}: 1 for the version being served.
  prometheus::Family<prometheus::Gauge>& store_info;

  // ultramem_memory_errors_total{code}: failed calls by gRPC code name (a bounded set).
  void CountError(absl::StatusCode code) { errors_.Count(code); }
  // Adds a lookup's tier counts and refreshes the hit ratio.
  void CountRows(int64_t hot, int64_t cold);

 private:
  StatusCodeCounters errors_;
};

}  // namespace ultramem::memory
