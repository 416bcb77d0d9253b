// Implementation of memory_server/hot_tier.h (host-RAM tiers).
#include "memory_server/hot_tier.h"

#include <algorithm>
#include <cstring>

#include "memory_server/slot_map.h"

namespace ultramem::memory {

FullHotTier::FullHotTier(const std::vector<int64_t>& block_rows, size_t row_bytes)
    : row_bytes_(row_bytes) {
  int64_t rows = 0;
  for (int64_t n : block_rows) {
    block_offset_.push_back(rows);
    rows += n;
  }
  total_bytes_ = rows * static_cast<int64_t>(row_bytes);
  data_.reset(new uint8_t[static_cast<size_t>(total_bytes_)]);
}

uint8_t* FullHotTier::MutableRow(int block_index, int64_t row_in_block) {
  return data_.get() + static_cast<size_t>(block_offset_[block_index] + row_in_block) * row_bytes_;
}

int FullHotTier::Pin(const RowId* ids, int n, const uint8_t** rows, PinHandle* handles) {
  for (int i = 0; i < n; ++i) {
    const int block = static_cast<int>(ids[i] >> 40);
    const int64_t row = static_cast<int64_t>(ids[i] & ((uint64_t{1} << 40) - 1));
    rows[i] = data_.get() + static_cast<size_t>(block_offset_[block] + row) * row_bytes_;
    handles[i] = 0;
  }
  return n;
}

ClockHotTier::ClockHotTier(int64_t capacity_bytes, size_t row_bytes)
    : capacity_bytes_(capacity_bytes),
      row_bytes_(row_bytes),
      num_slots_(row_bytes == 0 ? 0 : std::max<int64_t>(0, capacity_bytes) / static_cast<int64_t>(row_bytes)),
      slots_(std::make_unique<SlotMap>(num_slots_)),
      data_(new uint8_t[static_cast<size_t>(num_slots_) * row_bytes]) {}

ClockHotTier::~ClockHotTier() = default;

int64_t ClockHotTier::bytes_used() const {
  return slots_->resident() * static_cast<int64_t>(row_bytes_);
}

int ClockHotTier::Pin(const RowId* ids, int n, const uint8_t** rows, PinHandle* handles) {
  // A handle is the slot (-1 on a miss, which SlotMap::Release skips).
  static_assert(sizeof(PinHandle) == sizeof(int64_t));
  int64_t* slots = reinterpret_cast<int64_t*>(handles);
  const int hits = slots_->Pin(ids, n, slots);
  for (int i = 0; i < n; ++i) {
    rows[i] = slots[i] < 0 ? nullptr : data_.get() + static_cast<size_t>(slots[i]) * row_bytes_;
  }
  return hits;
}

void ClockHotTier::Release(const uint8_t* const* rows, const PinHandle* handles, int n) {
  for (int i = 0; i < n; ++i) {
    if (rows[i] == nullptr) continue;
    const int64_t slot = static_cast<int64_t>(handles[i]);
    slots_->Release(&slot, 1);
  }
}

void ClockHotTier::Admit(RowId id, const uint8_t* row) {
  const int64_t slot = slots_->Reserve(id);  // pinned and unindexed until Publish
  if (slot < 0) return;                       // resident already, or every candidate pinned
  std::memcpy(data_.get() + static_cast<size_t>(slot) * row_bytes_, row, row_bytes_);
  slots_->Publish(id, slot);
}

}  // namespace ultramem::memory
