// Implementation of memory_server/metrics.h.
#include "memory_server/metrics.h"

#include <string>

namespace ultramem::memory {
namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  // 10 µs .. ~5 s, ×2 steps (decode lookups live at the bottom, cold reads in the middle).
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 10e-6; v < 6.0; v *= 2) b.push_back(v);
  return b;
}

prometheus::Histogram::BucketBoundaries DeviceBuckets() {
  // 2 µs .. ~1 s, ×2 steps: a GPU lookup's copies and kernel take tens of microseconds.
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 2e-6; v < 1.1; v *= 2) b.push_back(v);
  return b;
}

const char* CodeName(absl::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return (i >= 0 && i < 17) ? kNames[i] : "UNKNOWN";
}

}  // namespace

MemoryMetrics::MemoryMetrics(prometheus::Registry& registry)
    : rows_family_(prometheus::BuildCounter()
                       .Name("ultramem_memory_rows_served_total")
                       .Help("Selections served, by the tier that held the row")
                       .Register(registry)),
      lookup_latency(prometheus::BuildHistogram()
                         .Name("ultramem_memory_lookup_latency_seconds")
                         .Help("Lookup RPC latency inside the server, from decode to reply")
                         .Register(registry)
                         .Add({}, LatencyBuckets())),
      rocksdb_read_latency(prometheus::BuildHistogram()
                               .Name("ultramem_memory_rocksdb_read_latency_seconds")
                               .Help("Latency of one batched RocksDB read of missed rows")
                               .Register(registry)
                               .Add({}, LatencyBuckets())),
      gpu_pool_latency(prometheus::BuildHistogram()
                           .Name("ultramem_memory_gpu_pool_latency_seconds")
                           .Help("GPU hot tier: one lookup's copies and pooling kernel on the "
                                 "device, from the first copy to the reply in pinned memory")
                           .Register(registry)
                           .Add({}, DeviceBuckets())),
      rows_hot(rows_family_.Add({{"tier", "hot"}})),
      rows_cold(rows_family_.Add({{"tier", "cold"}})),
      hot_hit_ratio(prometheus::BuildGauge()
                        .Name("ultramem_memory_hot_hit_ratio")
                        .Help("Fraction of selections served from the hot tier since start")
                        .Register(registry)
                        .Add({})),
      hot_bytes(prometheus::BuildGauge()
                    .Name("ultramem_memory_hot_bytes")
                    .Help("Bytes of value rows resident in the hot tier")
                    .Register(registry)
                    .Add({})),
      hot_capacity_bytes(prometheus::BuildGauge()
                             .Name("ultramem_memory_hot_capacity_bytes")
                             .Help("Capacity of the hot tier in bytes")
                             .Register(registry)
                             .Add({})),
      requests_in_flight(prometheus::BuildGauge()
                             .Name("ultramem_memory_requests_in_flight")
                             .Help("Lookup calls being served")
                             .Register(registry)
                             .Add({})),
      store_info(prometheus::BuildGauge()
                     .Name("ultramem_memory_store_info")
                     .Help("1 for the store version being served")
                     .Register(registry)),
      errors_(prometheus::BuildCounter()
                  .Name("ultramem_memory_errors_total")
                  .Help("Failed calls by gRPC status code")
                  .Register(registry)) {
  for (int i = 1; i < 17; ++i) {
    error_counters_[i] = &errors_.Add({{"code", CodeName(static_cast<absl::StatusCode>(i))}});
  }
}

void MemoryMetrics::CountError(absl::StatusCode code) {
  const int i = static_cast<int>(code);
  if (i > 0 && i < 17) error_counters_[i]->Increment();
}

void MemoryMetrics::CountRows(int64_t hot, int64_t cold) {
  if (hot > 0) rows_hot.Increment(static_cast<double>(hot));
  if (cold > 0) rows_cold.Increment(static_cast<double>(cold));
  const double h = rows_hot.Value(), c = rows_cold.Value();
  if (h + c > 0) hot_hit_ratio.Set(h / (h + c));
}

}  // namespace ultramem::memory
