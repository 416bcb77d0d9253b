// Bench (a): in-process pooled lookup (ValueStore::Lookup, whole shard hot) against a plain
// random-row gather loop (y += row, bf16 -> f32) over the same rows of the same table, one run,
// interleaved rounds. Prints rows/s of each and the ratio (target >= 0.8).
#include <chrono>
#include <cstdio>
#include <vector>

#include "bench/memory_server/bench_common.h"
#include "common/dtype.h"
#include "memory_server/request_decoder.h"
#include "memory_server/value_store.h"

using namespace ultramem::memory;
using Clock = std::chrono::steady_clock;

int main() {
  const int kKnum = 384, kDv = 512, kTokens = 16, kPerToken = 64, kBatches = 256, kRounds = 7;
  bench::BenchStore data(kKnum, kDv);
  ValueStoreOptions options;
  options.hot_capacity_bytes = data.manifest.TotalBytes();
  auto store = ValueStore::Open(data.store_dir, "", options, nullptr);
  if (!store.ok()) return 1;
  std::vector<bench::Batch> batches =
      bench::MakeBatches(kBatches, kTokens, kPerToken, data.manifest.num_rows, 0, 1);
  std::vector<DecodedLookup> decoded(kBatches);
  for (int i = 0; i < kBatches; ++i) {
    if (!DecodeLookupRequest(bench::ToRequest(batches[i], false), (*store)->manifest(), {}, &decoded[i]).ok()) return 1;
  }
  // The gather loop reads the same rows of the same hot-tier table.
  std::vector<std::vector<const uint16_t*>> pointers(kBatches);
  for (int i = 0; i < kBatches; ++i) {
    LookupScratch scratch;
    (*store)->PinHot(decoded[i], &scratch);
    for (const uint8_t* p : scratch.rows) pointers[i].push_back(reinterpret_cast<const uint16_t*>(p));
  }
  const int64_t rows_per_pass = static_cast<int64_t>(kBatches) * kTokens * kPerToken;
  std::vector<float> out(static_cast<size_t>(kTokens) * 4 * kDv);
  std::vector<float> acc(kDv);
  LookupScratch scratch;
  double best_pool = 0, best_gather = 0;
  float sink = 0;
  for (int round = 0; round < kRounds; ++round) {
    auto t0 = Clock::now();
    for (int pass = 0; pass < 4; ++pass) {
      for (const DecodedLookup& d : decoded) {
        if (!(*store)->Lookup(d, &scratch, out.data(), nullptr).ok()) return 1;
        sink += out[0];
      }
    }
    const double pool_s = std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    for (int pass = 0; pass < 4; ++pass) {
      for (const auto& rows : pointers) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (const uint16_t* row : rows) {
          for (int c = 0; c < kDv; ++c) acc[c] += ultramem::Bf16ToF32(row[c]);
        }
        sink += acc[0];
      }
    }
    const double gather_s = std::chrono::duration<double>(Clock::now() - t0).count();
    best_pool = std::max(best_pool, 4 * rows_per_pass / pool_s);
    best_gather = std::max(best_gather, 4 * rows_per_pass / gather_s);
  }
  std::printf("bench (a) pooled lookup vs plain gather: table %lld rows x %d bf16 (%.0f MiB), "
              "batches of %d tokens x %d selections, best of %d rounds\n",
              static_cast<long long>(data.manifest.num_rows), kDv,
              data.manifest.TotalBytes() / 1048576.0, kTokens, kPerToken, kRounds);
  std::printf("  pooled lookup  %10.3f M rows/s  (%.2f GB/s of rows)\n", best_pool / 1e6,
              best_pool * kDv * 2 / 1e9);
  std::printf("  plain gather   %10.3f M rows/s  (%.2f GB/s of rows)\n", best_gather / 1e6,
              best_gather * kDv * 2 / 1e9);
  std::printf("  ratio pooled/gather = %.2f   (target >= 0.8)   [sink %g]\n", best_pool / best_gather,
              static_cast<double>(sink != 0));
  return 0;
}
