// The GPU hot tier's part of memory_server/value_store.h: opening the device tier (preloading
// or computing the rows in place), mapping a lookup's rows to device slots on the host, and the
// device lookup with misses promoted into slots. The device side is behind gpu_hot_tier.h.
#include "memory_server/value_store.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "memory_server/metrics.h"
#include "memory_server/slot_map.h"

namespace ultramem::memory {

absl::Status ValueStore::OpenGpuTier(const DeviceSpec& device) {
  const StoreManifest& m = manifest_;
  if (m.dtype != StoreDType::kBF16) {
    return absl::FailedPreconditionError(
        absl::StrCat("store version ", m.version,
                     " holds F32 rows; the GPU hot tier holds bf16 rows (import "
                     "with --store_dtype=bf16, or serve with --device=cpu)"));
  }
  device_name_ = DeviceName(device);
  const int64_t row_bytes = static_cast<int64_t>(m.RowBytes());
  const bool full = options_.hot_capacity_bytes >= m.TotalBytes();
  GpuHotTierOptions gpu;
  gpu.device = device.index;
  gpu.num_slots = full ? m.TotalBytes() / row_bytes
                       : std::max<int64_t>(0, options_.hot_capacity_bytes) / row_bytes;
  gpu.width = m.blocks[0].width();
  gpu.expand = m.expand;
  gpu.value_dim = m.value_dim;
  gpu.cores = m.cores;
  gpu.col_begin = m.blocks[0].col_begin;
  gpu.num_streams = options_.gpu_streams;
  UM_ASSIGN_OR_RETURN(gpu_, CreateGpuHotTier(gpu));
  device_name_ = gpu_->device_name();
  if (!full) {
    gpu_slots_ = std::make_unique<SlotMap>(gpu.num_slots);
    return absl::OkStatus();
  }
  int64_t first = 0;
  for (const BlockSpec& b : m.blocks) {
    gpu_block_slot_.push_back(first);
    first += b.num_rows();
  }
  if (m.synthetic) {
    for (size_t b = 0; b < m.blocks.size(); ++b) {
      const BlockSpec& block = m.blocks[b];
      UM_RETURN_IF_ERROR(gpu_->FillSynthetic(*m.synthetic, block.layer, block.row_begin,
                                             block.num_rows(), gpu_block_slot_[b]));
    }
    return absl::OkStatus();
  }
  // Rows arrive in block order: stage runs of consecutive slots and upload each run whole.
  constexpr int64_t kStageBytes = 64 << 20;
  const int64_t stage_rows = std::max<int64_t>(1, kStageBytes / row_bytes);
  std::vector<uint8_t> stage(static_cast<size_t>(stage_rows * row_bytes));
  int64_t stage_first = 0, staged = 0;
  absl::Status upload;
  auto flush = [&] {
    if (staged > 0 && upload.ok()) {
      upload = gpu_->Upload(stage_first, staged, reinterpret_cast<const uint16_t*>(stage.data()));
    }
    staged = 0;
  };
  UM_RETURN_IF_ERROR(ScanRows([&](int b, int64_t row, const uint8_t* data) {
    const int64_t slot = gpu_block_slot_[b] + row;
    if (staged == stage_rows || (staged > 0 && slot != stage_first + staged)) flush();
    if (staged == 0) stage_first = slot;
    std::memcpy(stage.data() + staged * row_bytes, data, row_bytes);
    ++staged;
  }));
  flush();
  return upload;
}

int ValueStore::PinHotGpu(const DecodedLookup& lookup, LookupScratch* scratch) const {
  const int S = lookup.num_selections;
  scratch->slots.resize(S);
  if (gpu_slots_ == nullptr) {
    const int64_t first = gpu_block_slot_[lookup.block_index];
    for (int s = 0; s < S; ++s) {
      scratch->slots[s] = first + static_cast<int64_t>(scratch->ids[s] & ((uint64_t{1} << 40) - 1));
    }
    scratch->misses = 0;
    return 0;
  }
  const int hits = gpu_slots_->Pin(scratch->ids.data(), S, scratch->slots.data());
  scratch->misses = S - hits;
  return scratch->misses;
}

absl::Status ValueStore::CompleteGpu(const DecodedLookup& lookup, LookupScratch* scratch,
                                     float* out, LookupStats* stats) const {
  const int S = lookup.num_selections;
  const int64_t num_slots = gpu_->num_slots();
  std::vector<RowId> miss_ids;
  absl::Status status;
  if (scratch->misses > 0) {
    // Missed rows travel with the request as extra rows (slot num_slots + i) and are promoted into
    // reserved slots after the kernel; the answer never depends on the promotion succeeding.
    std::vector<uint8_t> missed(S);
    for (int s = 0; s < S; ++s) missed[s] = scratch->slots[s] < 0;
    std::vector<int> miss_of;
    status = FetchMisses(lookup, scratch, missed, &miss_of, &miss_ids, stats);
    for (int s = 0; s < S; ++s) {
      if (miss_of[s] >= 0) scratch->slots[s] = status.ok() ? num_slots + miss_of[s] : -1;
    }
    scratch->promote.assign(miss_ids.size(), -1);
    if (status.ok()) {
      for (size_t i = 0; i < miss_ids.size(); ++i)
        scratch->promote[i] = gpu_slots_->Reserve(miss_ids[i]);
    }
  }
  if (status.ok()) {
    GpuPoolCall call;
    call.num_tokens = lookup.num_tokens;
    call.num_selections = S;
    call.offsets = lookup.offsets.data();
    call.slots = scratch->slots.data();
    call.groups = lookup.groups.data();
    call.scores = lookup.weights.data();
    call.extra_rows = reinterpret_cast<const uint16_t*>(scratch->miss_data.data());
    call.num_extra = static_cast<int>(miss_ids.size());
    call.promote_to = miss_ids.empty() ? nullptr : scratch->promote.data();
    call.out = out;
    double device_seconds = 0;
    status = gpu_->Pool(call, &device_seconds);
    if (stats != nullptr) stats->device_seconds += device_seconds;
    if (metrics_ != nullptr) metrics_->gpu_pool_latency.Observe(device_seconds);
  }
  if (gpu_slots_ != nullptr) {
    for (size_t i = 0; i < miss_ids.size(); ++i) {
      if (scratch->promote[i] < 0) continue;
      if (status.ok()) {
        gpu_slots_->Publish(miss_ids[i], scratch->promote[i]);
      } else {
        gpu_slots_->Abandon(scratch->promote[i]);
      }
    }
    gpu_slots_->Release(scratch->slots.data(), S);  // hits only: extra slots are >= num_slots
  }
  if (stats != nullptr) {
    stats->hot_rows += S - scratch->misses;
    stats->cold_rows += scratch->misses;
  }
  return status;
}

}  // namespace ultramem::memory
