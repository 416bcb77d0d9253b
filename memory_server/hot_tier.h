// The host hot tier: value rows resident in host RAM, in front of the RocksDB cold tier. (The GPU
// hot tier is gpu_hot_tier.h + slot_map.h: device rows are not host pointers.)
#pragma once

#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"
#include <vector>

namespace ultramem::memory {

class SlotMap;

// A row of the store: (block index << 40) | (row - block.row_begin).
using RowId = uint64_t;
inline RowId MakeRowId(int block_index, int64_t row_in_block) {
  return (static_cast<uint64_t>(block_index) << 40) | static_cast<uint64_t>(row_in_block);
}
// Opaque pin handle handed back to Release.
using PinHandle = uint64_t;

// Thread safe: Pin, Release and Admit may be called from any number of threads at once.
class HotTier {
 public:
  virtual ~HotTier() = default;

  // "full" (the whole shard preloaded), "clock" (a CLOCK cache), or "none" (capacity 0).
  virtual absl::string_view kind() const = 0;
  virtual int64_t capacity_bytes() const = 0;
  // Bytes of resident rows.
  virtual int64_t bytes_used() const = 0;
  // Every row of the shard is resident: Pin never misses and Admit is never needed.
  virtual bool complete() const = 0;

  // For each of the n ids: rows[i] = the resident row (row_bytes long), which stays valid and
  // unchanged until Release(&handles[i], 1); or nullptr on a miss (handles[i] is then ignored by
  // Release). Marks hits as recently used. Returns the number of hits. Never blocks on I/O.
  virtual int Pin(const RowId* ids, int n, const uint8_t** rows, PinHandle* handles) = 0;
  // Unpins rows pinned by Pin; only the handles of hits are looked at.
  virtual void Release(const uint8_t* const* rows, const PinHandle* handles, int n) = 0;
  // Offers a row just read from the cold tier (row_bytes long, copied). May evict an unpinned
  // row; may decline (capacity 0, or every candidate pinned). A row already resident is kept.
  virtual void Admit(RowId id, const uint8_t* row) = 0;
};

// The whole shard in one allocation, filled by the caller through Fill before first use.
// `block_rows[b]` is the row count of block b.
class FullHotTier final : public HotTier {
 public:
  FullHotTier(const std::vector<int64_t>& block_rows, size_t row_bytes);
  absl::string_view kind() const override { return "full"; }
  int64_t capacity_bytes() const override { return total_bytes_; }
  int64_t bytes_used() const override { return total_bytes_; }
  bool complete() const override { return true; }
  int Pin(const RowId* ids, int n, const uint8_t** rows, PinHandle* handles) override;
  void Release(const uint8_t* const*, const PinHandle*, int) override {}
  void Admit(RowId, const uint8_t*) override {}
  // Writable row for preloading (not thread safe against Pin of the same row).
  uint8_t* MutableRow(int block_index, int64_t row_in_block);

 private:
  size_t row_bytes_;
  int64_t total_bytes_ = 0;
  std::vector<int64_t> block_offset_;  // first row of each block in data_
  std::unique_ptr<uint8_t[]> data_;
};

// A fixed number of row slots in host RAM with CLOCK (second-chance) eviction: a hit sets a
// reference bit, the hand clears bits and evicts the first unpinned slot without one. Under skewed
// (Zipf) popularity it keeps the head like LRU does, at a lock-free-ish cost per hit. The policy
// is memory_server/slot_map.h's SlotMap (shared with the GPU tier); this class adds the row data.
// `capacity_bytes` counts row data only; the index adds about 32 bytes per slot.
class ClockHotTier final : public HotTier {
 public:
  ClockHotTier(int64_t capacity_bytes, size_t row_bytes);
  ~ClockHotTier() override;
  absl::string_view kind() const override { return num_slots_ == 0 ? "none" : "clock"; }
  int64_t capacity_bytes() const override { return capacity_bytes_; }
  int64_t bytes_used() const override;
  bool complete() const override { return false; }
  int Pin(const RowId* ids, int n, const uint8_t** rows, PinHandle* handles) override;
  void Release(const uint8_t* const* rows, const PinHandle* handles, int n) override;
  void Admit(RowId id, const uint8_t* row) override;

 private:
  int64_t capacity_bytes_;
  size_t row_bytes_;
  int64_t num_slots_;
  std::unique_ptr<SlotMap> slots_;
  std::unique_ptr<uint8_t[]> data_;  // num_slots_ rows
};

}  // namespace ultramem::memory
