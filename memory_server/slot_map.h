// Which value row sits in which slot of a fixed array of row slots (the host-RAM ClockHotTier's
// and the GPU tier's device memory): a CLOCK index with pins, kept on the host. Rows are written
// into slots by the caller; the map only decides where, and guarantees that a pinned slot is never
// handed out for another row.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "memory_server/hot_tier.h"

namespace ultramem::memory {

// Thread safe: every method may be called from any number of threads at once. Split into
// independently locked shards by row hash; each shard owns a contiguous range of slots.
class SlotMap {
 public:
  explicit SlotMap(int64_t num_slots);
  ~SlotMap();

  int64_t num_slots() const { return num_slots_; }
  // Slots holding an indexed (servable) row.
  int64_t resident() const;

  // For each of the n ids: slots[i] = the slot holding it, pinned (it keeps that row until
  // Release), and marked recently used; or -1 on a miss. Returns the number of hits.
  int Pin(const RowId* ids, int n, int64_t* slots);
  // Unpins the slots of a Pin; entries outside [0, num_slots) are skipped.
  void Release(const int64_t* slots, int n);

  // A slot to write `id` into: a free one, or the CLOCK victim (an unpinned slot without its
  // reference bit; its row leaves the index). The slot comes back pinned and unindexed, so nobody
  // reads or takes it until Publish or Abandon. -1 when `id` is already resident or every
  // candidate is pinned (the caller then serves the row without caching it).
  int64_t Reserve(RowId id);
  // The slot Reserve gave now holds `id`'s row (written, visible to later readers): indexes it
  // and unpins. When `id` became resident meanwhile (another lookup promoted it), frees the slot.
  void Publish(RowId id, int64_t slot);
  // Gives a reserved slot back unwritten.
  void Abandon(int64_t slot);

 private:
  struct Shard;
  Shard& ShardOfSlot(int64_t slot) const;
  int64_t num_slots_;
  int64_t slots_per_shard_ = 0;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace ultramem::memory
