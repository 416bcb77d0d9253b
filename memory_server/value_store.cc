// Implementation of memory_server/value_store.h.
#include "memory_server/value_store.h"

#include <chrono>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/pooling.h"
#include "common/status.h"
#include "memory_server/crc32c.h"
#include "memory_server/metrics.h"

namespace ultramem::memory {

ValueStore::~ValueStore() = default;

absl::StatusOr<std::unique_ptr<ValueStore>> ValueStore::Open(const std::string& store_dir,
                                                             const std::string& version,
                                                             const ValueStoreOptions& options,
                                                             MemoryMetrics* metrics) {
  std::string name = version;
  if (name.empty()) {
    UM_ASSIGN_OR_RETURN(name, ReadCurrent(store_dir));
  }
  UM_RETURN_IF_ERROR(CheckVersionName(name));
  std::unique_ptr<ValueStore> store(new ValueStore());
  UM_ASSIGN_OR_RETURN(store->manifest_, ReadManifest(store_dir, name));
  store->options_ = options;
  store->metrics_ = metrics;
  UM_ASSIGN_OR_RETURN(store->cold_, ColdStore::Open(store_dir, store->manifest_, options.cold));

  const StoreManifest& m = store->manifest_;
  const auto start = std::chrono::steady_clock::now();
  if (options.hot_capacity_bytes >= m.TotalBytes()) {
    std::vector<int64_t> block_rows;
    for (const BlockSpec& b : m.blocks) block_rows.push_back(b.num_rows());
    auto tier = std::make_unique<FullHotTier>(block_rows, m.RowBytes());
    UM_RETURN_IF_ERROR(store->Preload(tier.get()));
    store->hot_ = std::move(tier);
  } else {
    store->hot_ = std::make_unique<ClockHotTier>(options.hot_capacity_bytes, m.RowBytes());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  UM_LOG_INFO("opened store ", store_dir, " version ", name, " (model ", m.model_id, ", ",
              m.blocks.size(), " blocks, ", m.TotalBytes(), " bytes), hot tier ",
              store->hot_->kind(), " ", store->hot_->capacity_bytes(), " bytes",
              store->hot_->complete() ? absl::StrFormat(", preloaded in %.2f s", seconds) : "");
  return store;
}

absl::Status ValueStore::Preload(FullHotTier* tier) {
  const StoreManifest& m = manifest_;
  const size_t row_bytes = m.RowBytes();
  absl::flat_hash_map<int, int> block_of_layer;
  std::vector<uint32_t> crc(m.blocks.size(), 0);
  for (size_t b = 0; b < m.blocks.size(); ++b) block_of_layer[m.blocks[b].layer] = static_cast<int>(b);
  UM_RETURN_IF_ERROR(cold_->ScanAll([&](int layer, int64_t row, const uint8_t* data) {
    const int b = block_of_layer[layer];
    std::memcpy(tier->MutableRow(b, row - m.blocks[b].row_begin), data, row_bytes);
    if (options_.verify_block_checksums) crc[b] = Crc32c(crc[b], data, row_bytes);
  }));
  if (options_.verify_block_checksums) {
    for (size_t b = 0; b < m.blocks.size(); ++b) {
      if (crc[b] != m.blocks[b].crc32c) {
        return absl::DataLossError(absl::StrFormat(
            "store version %s: block of layer %d has CRC-32C %08x, the manifest says %08x",
            m.version, m.blocks[b].layer, crc[b], m.blocks[b].crc32c));
      }
    }
  }
  return absl::OkStatus();
}

int ValueStore::PinHot(const DecodedLookup& lookup, LookupScratch* scratch) const {
  const int S = lookup.num_selections;
  const BlockSpec& block = manifest_.blocks[lookup.block_index];
  scratch->ids.resize(S);
  scratch->rows.resize(S);
  scratch->handles.resize(S);
  for (int s = 0; s < S; ++s) {
    scratch->ids[s] = MakeRowId(lookup.block_index, lookup.rows[s] - block.row_begin);
  }
  const int hits = hot_->Pin(scratch->ids.data(), S, scratch->rows.data(), scratch->handles.data());
  scratch->pinned.assign(S, 0);
  for (int s = 0; s < S; ++s) scratch->pinned[s] = scratch->rows[s] != nullptr;
  scratch->misses = S - hits;
  return scratch->misses;
}

absl::Status ValueStore::Complete(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                                  LookupStats* stats) const {
  const int S = lookup.num_selections;
  const size_t row_bytes = manifest_.RowBytes();
  absl::Status status;
  if (scratch->misses > 0) {
    // Distinct missed rows, read in one batch.
    absl::flat_hash_map<RowId, size_t> slot_of;
    std::vector<ColdStore::RowRead> reads;
    std::vector<RowId> read_ids;
    for (int s = 0; s < S; ++s) {
      if (scratch->rows[s] != nullptr) continue;
      if (slot_of.emplace(scratch->ids[s], reads.size()).second) {
        reads.push_back({lookup.layer, lookup.rows[s]});
        read_ids.push_back(scratch->ids[s]);
      }
    }
    scratch->miss_data.resize(reads.size() * row_bytes);
    const auto start = std::chrono::steady_clock::now();
    status = cold_->ReadRows(reads, [&](size_t i, const uint8_t* data) {
      std::memcpy(scratch->miss_data.data() + i * row_bytes, data, row_bytes);
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (stats != nullptr) stats->cold_read_seconds += seconds;
    if (metrics_ != nullptr) metrics_->rocksdb_read_latency.Observe(seconds);
    if (status.ok()) {
      for (size_t i = 0; i < reads.size(); ++i) {
        hot_->Admit(read_ids[i], scratch->miss_data.data() + i * row_bytes);
      }
      for (int s = 0; s < S; ++s) {
        if (scratch->rows[s] == nullptr) {
          scratch->rows[s] = scratch->miss_data.data() + slot_of[scratch->ids[s]] * row_bytes;
        }
      }
    }
  }
  if (status.ok()) {
    const BlockSpec& block = manifest_.blocks[lookup.block_index];
    PoolShape shape;
    shape.expand = manifest_.expand;
    shape.value_dim = manifest_.value_dim;
    shape.cores = manifest_.cores;
    shape.col_begin = block.col_begin;
    shape.col_end = block.col_end;
    const size_t out_stride = static_cast<size_t>(manifest_.expand) * block.width();
    auto pool = [&](int first_token, int num_tokens, int per_token, int first_sel) {
      shape.num_tokens = num_tokens;
      shape.selections = per_token;
      float* y = out + first_token * out_stride;
      if (manifest_.dtype == StoreDType::kF32) {
        PoolRowsF32(shape, reinterpret_cast<const float* const*>(scratch->rows.data() + first_sel),
                    lookup.groups.data() + first_sel, lookup.weights.data() + first_sel * shape.cores, y);
      } else {
        PoolRowsBf16(shape, reinterpret_cast<const uint16_t* const*>(scratch->rows.data() + first_sel),
                     lookup.groups.data() + first_sel, lookup.weights.data() + first_sel * shape.cores, y);
      }
    };
    if (lookup.uniform) {
      pool(0, lookup.num_tokens, S / lookup.num_tokens, 0);
    } else {
      for (int t = 0; t < lookup.num_tokens; ++t) {
        pool(t, 1, lookup.offsets[t + 1] - lookup.offsets[t], lookup.offsets[t]);
      }
    }
  }
  // Unpin (hits only).
  for (int s = 0; s < S; ++s) {
    if (!scratch->pinned[s]) scratch->rows[s] = nullptr;
  }
  hot_->Release(scratch->rows.data(), scratch->handles.data(), S);
  if (stats != nullptr) {
    stats->hot_rows += S - scratch->misses;
    stats->cold_rows += scratch->misses;
  }
  return status;
}

absl::Status ValueStore::Lookup(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                                LookupStats* stats) const {
  PinHot(lookup, scratch);
  return Complete(lookup, scratch, out, stats);
}

}  // namespace ultramem::memory
