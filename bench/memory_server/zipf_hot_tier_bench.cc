// Bench (c): lookup throughput with the hot tier at 10% of the shard under Zipf-distributed row
// popularity (misses read from RocksDB, a small block cache), against the whole shard hot.
// Same request stream for both; the 10% tier is warmed on a different stream of the same law.
#include <chrono>
#include <cstdio>
#include <vector>

#include "bench/memory_server/bench_common.h"
#include "memory_server/request_decoder.h"
#include "memory_server/value_store.h"

using namespace ultramem::memory;
using Clock = std::chrono::steady_clock;

namespace {

struct Run {
  double rows_per_s = 0;
  double hit_ratio = 0;
};

Run Measure(const ValueStore& store, const std::vector<DecodedLookup>& lookups) {
  LookupScratch scratch;
  LookupStats stats;
  std::vector<float> out(16 * 4 * 512);
  int64_t rows = 0;
  const auto t0 = Clock::now();
  for (const DecodedLookup& d : lookups) {
    if (!store.Lookup(d, &scratch, out.data(), &stats).ok()) std::abort();
    rows += d.num_selections;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return {rows / s, static_cast<double>(stats.hot_rows) / (stats.hot_rows + stats.cold_rows)};
}

std::vector<DecodedLookup> Decode(const std::vector<bench::Batch>& batches, const StoreManifest& m) {
  std::vector<DecodedLookup> out(batches.size());
  for (size_t i = 0; i < batches.size(); ++i) {
    if (!DecodeLookupRequest(bench::ToRequest(batches[i], false), m, {}, &out[i]).ok()) std::abort();
  }
  return out;
}

}  // namespace

int main() {
  const int kBatches = 1500;
  const double kZipf = 1.0;
  bench::BenchStore data(/*knum=*/384, /*value_dim=*/512);
  ValueStoreOptions all_hot;
  all_hot.hot_capacity_bytes = data.manifest.TotalBytes();
  ValueStoreOptions tenth;
  tenth.hot_capacity_bytes = data.manifest.TotalBytes() / 10;
  tenth.cold.block_cache_bytes = 16 << 20;
  auto full = ValueStore::Open(data.store_dir, "", all_hot, nullptr);
  auto partial = ValueStore::Open(data.store_dir, "", tenth, nullptr);
  if (!full.ok() || !partial.ok()) return 1;
  const int64_t n = data.manifest.num_rows;
  auto warm = Decode(bench::MakeBatches(kBatches, 16, 64, n, kZipf, 11), data.manifest);
  auto stream = Decode(bench::MakeBatches(kBatches, 16, 64, n, kZipf, 12), data.manifest);
  Measure(**partial, warm);
  Measure(**full, warm);
  Run hot = Measure(**full, stream);
  Run mixed = Measure(**partial, stream);
  std::printf("bench (c) hot tier at 10%% of the shard vs all hot: %lld rows x 512 bf16 (%.0f MiB), "
              "Zipf s=%.1f, %d batches of 16 tokens x 64 selections, RocksDB block cache 16 MiB\n",
              static_cast<long long>(n), data.manifest.TotalBytes() / 1048576.0, kZipf, kBatches);
  std::printf("  all hot        %8.3f M rows/s\n", hot.rows_per_s / 1e6);
  std::printf("  10%% hot (CLOCK) %8.3f M rows/s, hot hit ratio %.3f\n", mixed.rows_per_s / 1e6,
              mixed.hit_ratio);
  std::printf("  ratio 10%%/all-hot = %.2f\n", mixed.rows_per_s / hot.rows_per_s);
  return 0;
}
