// Implementation of memory_server/metrics.h.
#include "memory_server/metrics.h"

#include <string>

#include "common/prometheus_util.h"

namespace ultramem::memory {

// Latencies: a lookup 10 µs .. ~5 s (decode lookups at the bottom, cold reads in the middle);
// the GPU tier's device work 2 µs .. ~1 s (copies and a kernel take tens of microseconds).
MemoryMetrics::MemoryMetrics(prometheus::Registry& registry)
    : rows_family_(AddCounterFamily(registry, "ultramem_memory_rows_served_total",
                                    "Selections served, by the tier that held the row")),
      lookup_latency(AddHistogram(registry, "ultramem_memory_lookup_latency_seconds",
                                  "Lookup RPC latency inside the server, from decode to reply",
                                  DoublingBuckets(10e-6, 6.0))),
      rocksdb_read_latency(AddHistogram(registry, "ultramem_memory_rocksdb_read_latency_seconds",
                                        "Latency of one batched RocksDB read of missed rows",
                                        DoublingBuckets(10e-6, 6.0))),
      gpu_pool_latency(AddHistogram(registry, "ultramem_memory_gpu_pool_latency_seconds",
                                    "GPU hot tier: one lookup's copies and pooling kernel on the "
                                    "device, from the first copy to the reply in pinned memory",
                                    DoublingBuckets(2e-6, 1.1))),
      rows_hot(rows_family_.Add({{"tier", "hot"}})),
      rows_cold(rows_family_.Add({{"tier", "cold"}})),
      hot_hit_ratio(AddGauge(registry, "ultramem_memory_hot_hit_ratio",
                             "Fraction of selections served from the hot tier since start")),
      hot_bytes(AddGauge(registry, "ultramem_memory_hot_bytes", "Bytes of value rows resident in the hot tier")),
      hot_capacity_bytes(AddGauge(registry, "ultramem_memory_hot_capacity_bytes", "Capacity of the hot tier in bytes")),
      requests_in_flight(AddGauge(registry, "ultramem_memory_requests_in_flight", "Lookup calls being served")),
      store_info(AddGaugeFamily(registry, "ultramem_memory_store_info", "1 for the store version being served")),
      errors_(registry, "ultramem_memory_errors_total", "Failed calls by gRPC status code", 1) {}

void MemoryMetrics::CountRows(int64_t hot, int64_t cold) {
  if (hot > 0) rows_hot.Increment(static_cast<double>(hot));
  if (cold > 0) rows_cold.Increment(static_cast<double>(cold));
  const double h = rows_hot.Value(), c = rows_cold.Value();
  if (h + c > 0) hot_hit_ratio.Set(h / (h + c));
}

}  // namespace ultramem::memory
