// Bench (a): in-process pooled lookup (ValueStore::Lookup, whole shard hot) against a plain
// random-row gather loop (y += row, bf16 -> f32) over the same rows of the same table, one run,
// interleaved rounds. Prints rows/s of each and the ratio (target >= 0.8).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/memory_server/bench_common.h"
#include "common/dtype.h"
#include "memory_server/request_decoder.h"
#include "memory_server/value_store.h"

using namespace ultramem::memory;
using Clock = std::chrono::steady_clock;

namespace {

// Best-of-rounds rows/s of the pooled lookup and of the gather loop for one batch shape.
void RunShape(const ValueStore& store, const StoreManifest& manifest, int tokens, int per_token) {
  const int kDv = manifest.value_dim, kRounds = 7;
  const int batches_count = 4096 / tokens;
  std::vector<bench::Batch> batches =
      bench::MakeBatches(batches_count, tokens, per_token, manifest.num_rows, 0, 1);
  std::vector<DecodedLookup> decoded(batches_count);
  for (int i = 0; i < batches_count; ++i) {
    if (!DecodeLookupRequest(bench::ToRequest(batches[i], false), manifest, {}, &decoded[i]).ok()) std::abort();
  }
  // The gather loop reads the same rows of the same hot-tier table.
  std::vector<std::vector<const uint16_t*>> pointers(batches_count);
  for (int i = 0; i < batches_count; ++i) {
    LookupScratch scratch;
    store.PinHot(decoded[i], &scratch);
    for (const uint8_t* p : scratch.rows) pointers[i].push_back(reinterpret_cast<const uint16_t*>(p));
  }
  const int64_t rows_per_pass = static_cast<int64_t>(batches_count) * tokens * per_token;
  std::vector<float> out(static_cast<size_t>(tokens) * manifest.expand * kDv);
  std::vector<float> acc(kDv);
  LookupScratch scratch;
  double best_pool = 0, best_gather = 0;
  float sink = 0;
  for (int round = 0; round < kRounds; ++round) {
    auto t0 = Clock::now();
    for (const DecodedLookup& d : decoded) {
      if (!store.Lookup(d, &scratch, out.data(), nullptr).ok()) std::abort();
      sink += out[0];
    }
    const double pool_s = std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    for (const auto& rows : pointers) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (const uint16_t* row : rows) {
        for (int c = 0; c < kDv; ++c) acc[c] += ultramem::Bf16ToF32(row[c]);
      }
      sink += acc[0];
    }
    const double gather_s = std::chrono::duration<double>(Clock::now() - t0).count();
    best_pool = std::max(best_pool, rows_per_pass / pool_s);
    best_gather = std::max(best_gather, rows_per_pass / gather_s);
  }
  std::printf("  %2d token(s) x %d selections: pooled %7.3f M rows/s (%5.2f GB/s) | gather %7.3f M "
              "rows/s (%5.2f GB/s) | ratio %.2f   [sink %d]\n",
              tokens, per_token, best_pool / 1e6, best_pool * kDv * 2 / 1e9, best_gather / 1e6,
              best_gather * kDv * 2 / 1e9, best_pool / best_gather, sink != 0);
}

}  // namespace

int main() {
  bench::BenchStore data(/*knum=*/384, /*value_dim=*/512);
  ValueStoreOptions options;
  options.hot_capacity_bytes = data.manifest.TotalBytes();
  auto store = ValueStore::Open(data.store_dir, "", options, nullptr);
  if (!store.ok()) return 1;
  std::printf("bench (a) pooled lookup (ValueStore::Lookup, all hot) vs plain gather (y += row) over "
              "the same rows: table %lld rows x %d bf16 (%.0f MiB), 4096 tokens per round, best of 7 "
              "rounds (target ratio >= 0.8)\n",
              static_cast<long long>(data.manifest.num_rows), data.manifest.value_dim,
              data.manifest.TotalBytes() / 1048576.0);
  RunShape(**store, data.manifest, 1, 64);
  RunShape(**store, data.manifest, 16, 64);
  return 0;
}
