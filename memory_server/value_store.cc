// Implementation of memory_server/value_store.h: opening a version, the host hot tier's lookup,
// and what both tiers share (scans, misses). The GPU tier's part is value_store_gpu.cc.
#include "memory_server/value_store.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/pooling.h"
#include "common/status.h"
#include "memory_server/crc32c.h"
#include "memory_server/metrics.h"
#include "memory_server/slot_map.h"

namespace ultramem::memory {

ValueStore::~ValueStore() = default;

absl::StatusOr<std::unique_ptr<ValueStore>> ValueStore::Open(const std::string& store_dir,
                                                             const std::string& version,
                                                             const ValueStoreOptions& options,
                                                             MemoryMetrics* metrics) {
  UM_ASSIGN_OR_RETURN(const DeviceSpec device, ParseDevice(options.device));
  UM_RETURN_IF_ERROR(CheckDeviceAvailable(device));
  std::string name = version;
  if (name.empty()) {
    UM_ASSIGN_OR_RETURN(name, ReadCurrent(store_dir));
  }
  UM_RETURN_IF_ERROR(CheckVersionName(name));
  std::unique_ptr<ValueStore> store(new ValueStore());
  UM_ASSIGN_OR_RETURN(store->manifest_, ReadManifest(store_dir, name));
  store->options_ = options;
  store->metrics_ = metrics;
  if (!store->manifest_.synthetic) {
    UM_ASSIGN_OR_RETURN(store->cold_, ColdStore::Open(store_dir, store->manifest_, options.cold));
  }

  const StoreManifest& m = store->manifest_;
  const auto start = std::chrono::steady_clock::now();
  if (device.is_gpu()) {
    UM_RETURN_IF_ERROR(store->OpenGpuTier(device));
  } else {
    UM_RETURN_IF_ERROR(store->OpenHostTier());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const HotTierInfo hot = store->hot_info();
  UM_LOG_INFO("opened store ", store_dir, " version ", name, " (model ", m.model_id, ", ",
              m.blocks.size(), " blocks, ", m.TotalBytes(), " bytes",
              m.synthetic ? ", synthetic" : "", "), hot tier ", hot.kind, " on ",
              store->device_name_, " ", hot.capacity_bytes, " bytes",
              hot.complete ? absl::StrFormat(", preloaded in %.2f s", seconds) : "");
  return store;
}

absl::Status ValueStore::OpenHostTier() {
  const StoreManifest& m = manifest_;
  if (options_.hot_capacity_bytes < m.TotalBytes()) {
    hot_ = std::make_unique<ClockHotTier>(options_.hot_capacity_bytes, m.RowBytes());
    return absl::OkStatus();
  }
  std::vector<int64_t> block_rows;
  for (const BlockSpec& b : m.blocks) block_rows.push_back(b.num_rows());
  auto tier = std::make_unique<FullHotTier>(block_rows, m.RowBytes());
  if (m.synthetic) {
    // Computed in place, rows split over the host's cores.
    const int threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    for (size_t b = 0; b < m.blocks.size(); ++b) {
      const BlockSpec& block = m.blocks[b];
      std::vector<std::thread> workers;
      const int64_t per = (block.num_rows() + threads - 1) / threads;
      for (int t = 0; t < threads; ++t) {
        const int64_t r0 = std::min(block.num_rows(), t * per);
        const int64_t r1 = std::min(block.num_rows(), r0 + per);
        if (r0 >= r1) break;
        workers.emplace_back([&, b, r0, r1] {
          FillSyntheticBf16(*m.synthetic, block.layer, block.row_begin + r0, block.row_begin + r1,
                            block.col_begin, block.col_end,
                            reinterpret_cast<uint16_t*>(tier->MutableRow(static_cast<int>(b), r0)));
        });
      }
      for (auto& w : workers) w.join();
    }
  } else {
    const size_t row_bytes = m.RowBytes();
    UM_RETURN_IF_ERROR(ScanRows([&](int b, int64_t row, const uint8_t* data) {
      std::memcpy(tier->MutableRow(b, row), data, row_bytes);
    }));
  }
  hot_ = std::move(tier);
  return absl::OkStatus();
}

absl::Status ValueStore::ScanRows(const std::function<void(int, int64_t, const uint8_t*)>& sink) {
  const StoreManifest& m = manifest_;
  const size_t row_bytes = m.RowBytes();
  absl::flat_hash_map<int, int> block_of_layer;
  std::vector<uint32_t> crc(m.blocks.size(), 0);
  for (size_t b = 0; b < m.blocks.size(); ++b) block_of_layer[m.blocks[b].layer] = static_cast<int>(b);
  UM_RETURN_IF_ERROR(cold_->ScanAll([&](int layer, int64_t row, const uint8_t* data) {
    const int b = block_of_layer[layer];
    sink(b, row - m.blocks[b].row_begin, data);
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

HotTierInfo ValueStore::hot_info() const {
  HotTierInfo info;
  info.device = device_name_;
  if (hot_ != nullptr) {
    info.kind = std::string(hot_->kind());
    info.capacity_bytes = hot_->capacity_bytes();
    info.bytes_used = hot_->bytes_used();
    info.complete = hot_->complete();
    return info;
  }
  const int64_t row_bytes = static_cast<int64_t>(manifest_.RowBytes());
  info.capacity_bytes = gpu_->num_slots() * row_bytes;
  if (gpu_slots_ == nullptr) {
    info.kind = "gpu-full";
    info.bytes_used = info.capacity_bytes;
    info.complete = true;
  } else {
    info.kind = gpu_slots_->num_slots() == 0 ? "gpu-none" : "gpu-clock";
    info.bytes_used = gpu_slots_->resident() * row_bytes;
  }
  return info;
}

absl::Status ValueStore::ReadMisses(const std::vector<ColdStore::RowRead>& reads,
                                    const std::function<void(size_t, const uint8_t*)>& sink) const {
  if (cold_ != nullptr) return cold_->ReadRows(reads, sink);
  const BlockSpec& block0 = manifest_.blocks[0];
  std::vector<uint16_t> row(block0.width());
  for (size_t i = 0; i < reads.size(); ++i) {
    FillSyntheticBf16(*manifest_.synthetic, reads[i].layer, reads[i].row, reads[i].row + 1,
                      block0.col_begin, block0.col_end, row.data());
    sink(i, reinterpret_cast<const uint8_t*>(row.data()));
  }
  return absl::OkStatus();
}

absl::Status ValueStore::FetchMisses(const DecodedLookup& lookup, LookupScratch* scratch,
                                     const std::vector<uint8_t>& missed, std::vector<int>* miss_of,
                                     std::vector<RowId>* miss_ids, LookupStats* stats) const {
  const int S = lookup.num_selections;
  const size_t row_bytes = manifest_.RowBytes();
  absl::flat_hash_map<RowId, int> index_of;
  std::vector<ColdStore::RowRead> reads;
  miss_of->assign(S, -1);
  miss_ids->clear();
  for (int s = 0; s < S; ++s) {
    if (!missed[s]) continue;
    auto [it, added] = index_of.emplace(scratch->ids[s], static_cast<int>(reads.size()));
    if (added) {
      reads.push_back({lookup.layer, lookup.rows[s]});
      miss_ids->push_back(scratch->ids[s]);
    }
    (*miss_of)[s] = it->second;
  }
  scratch->miss_data.resize(reads.size() * row_bytes);
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = ReadMisses(reads, [&](size_t i, const uint8_t* data) {
    std::memcpy(scratch->miss_data.data() + i * row_bytes, data, row_bytes);
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (stats != nullptr) stats->cold_read_seconds += seconds;
  if (metrics_ != nullptr && cold_ != nullptr) metrics_->rocksdb_read_latency.Observe(seconds);
  return status;
}

int ValueStore::PinHot(const DecodedLookup& lookup, LookupScratch* scratch) const {
  const int S = lookup.num_selections;
  const BlockSpec& block = manifest_.blocks[lookup.block_index];
  scratch->ids.resize(S);
  for (int s = 0; s < S; ++s) {
    scratch->ids[s] = MakeRowId(lookup.block_index, lookup.rows[s] - block.row_begin);
  }
  if (gpu_ != nullptr) return PinHotGpu(lookup, scratch);
  scratch->rows.resize(S);
  scratch->handles.resize(S);
  const int hits = hot_->Pin(scratch->ids.data(), S, scratch->rows.data(), scratch->handles.data());
  scratch->pinned.assign(S, 0);
  for (int s = 0; s < S; ++s) scratch->pinned[s] = scratch->rows[s] != nullptr;
  scratch->misses = S - hits;
  return scratch->misses;
}

absl::Status ValueStore::Complete(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                                  LookupStats* stats) const {
  if (gpu_ != nullptr) return CompleteGpu(lookup, scratch, out, stats);
  const int S = lookup.num_selections;
  const size_t row_bytes = manifest_.RowBytes();
  absl::Status status;
  if (scratch->misses > 0) {
    std::vector<uint8_t> missed(S);
    for (int s = 0; s < S; ++s) missed[s] = scratch->rows[s] == nullptr;
    std::vector<int> miss_of;
    std::vector<RowId> miss_ids;
    status = FetchMisses(lookup, scratch, missed, &miss_of, &miss_ids, stats);
    if (status.ok()) {
      for (size_t i = 0; i < miss_ids.size(); ++i) {
        hot_->Admit(miss_ids[i], scratch->miss_data.data() + i * row_bytes);
      }
      for (int s = 0; s < S; ++s) {
        if (miss_of[s] >= 0) scratch->rows[s] = scratch->miss_data.data() + miss_of[s] * row_bytes;
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
