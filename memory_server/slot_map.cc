// Implementation of memory_server/slot_map.h: the CLOCK policy of both the host-RAM
// ClockHotTier (hot_tier.cc) and the GPU tier.
#include "memory_server/slot_map.h"

#include <algorithm>
#include <atomic>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace ultramem::memory {
namespace {
constexpr int kMaxShards = 16;
constexpr RowId kNoRow = ~RowId{0};

inline uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

struct SlotMap::Shard {
  absl::Mutex mu;
  int64_t first = 0;  // global number of local slot 0
  uint32_t num_slots = 0;
  absl::flat_hash_map<RowId, uint32_t> index ABSL_GUARDED_BY(mu);
  std::vector<RowId> slot_id ABSL_GUARDED_BY(mu);  // kNoRow: free or reserved
  std::vector<uint8_t> referenced ABSL_GUARDED_BY(mu);
  std::vector<uint32_t> free_list ABSL_GUARDED_BY(mu);
  uint32_t used ABSL_GUARDED_BY(mu) = 0;  // slots [0, used) have been handed out at least once
  uint32_t hand ABSL_GUARDED_BY(mu) = 0;
  // Pins are taken under mu and dropped without it; eviction (under mu) skips pinned slots.
  std::unique_ptr<std::atomic<int32_t>[]> pins;
  std::atomic<int64_t> resident{0};
};

SlotMap::SlotMap(int64_t num_slots) : num_slots_(std::max<int64_t>(0, num_slots)) {
  if (num_slots_ == 0) return;
  const int num_shards = num_slots_ >= 1024 ? kMaxShards : 1;
  slots_per_shard_ = num_slots_ / num_shards;
  for (int s = 0; s < num_shards; ++s) {
    auto shard = std::make_unique<Shard>();
    shard->first = s * slots_per_shard_;
    // The last shard takes the remainder.
    shard->num_slots =
        static_cast<uint32_t>(s + 1 == num_shards ? num_slots_ - shard->first : slots_per_shard_);
    absl::MutexLock lock(&shard->mu);
    shard->slot_id.assign(shard->num_slots, kNoRow);
    shard->referenced.assign(shard->num_slots, 0);
    shard->pins.reset(new std::atomic<int32_t>[shard->num_slots]);
    for (uint32_t i = 0; i < shard->num_slots; ++i) shard->pins[i].store(0);
    shard->index.reserve(shard->num_slots);
    shards_.push_back(std::move(shard));
  }
}

SlotMap::~SlotMap() = default;

SlotMap::Shard& SlotMap::ShardOfSlot(int64_t slot) const {
  const int64_t s = std::min<int64_t>(slot / slots_per_shard_, shards_.size() - 1);
  return *shards_[s];
}

int64_t SlotMap::resident() const {
  int64_t n = 0;
  for (const auto& s : shards_) n += s->resident.load(std::memory_order_relaxed);
  return n;
}

int SlotMap::Pin(const RowId* ids, int n, int64_t* slots) {
  if (num_slots_ == 0) {
    for (int i = 0; i < n; ++i) slots[i] = -1;
    return 0;
  }
  int hits = 0;
  for (int i = 0; i < n; ++i) {
    Shard& shard = *shards_[Mix(ids[i]) % shards_.size()];
    absl::MutexLock lock(&shard.mu);
    auto it = shard.index.find(ids[i]);
    if (it == shard.index.end()) {
      slots[i] = -1;
      continue;
    }
    shard.referenced[it->second] = 1;
    shard.pins[it->second].fetch_add(1, std::memory_order_relaxed);
    slots[i] = shard.first + it->second;
    ++hits;
  }
  return hits;
}

void SlotMap::Release(const int64_t* slots, int n) {
  for (int i = 0; i < n; ++i) {
    if (slots[i] < 0 || slots[i] >= num_slots_) continue;
    Shard& shard = ShardOfSlot(slots[i]);
    shard.pins[slots[i] - shard.first].fetch_sub(1, std::memory_order_release);
  }
}

int64_t SlotMap::Reserve(RowId id) {
  if (num_slots_ == 0) return -1;
  Shard& shard = *shards_[Mix(id) % shards_.size()];
  absl::MutexLock lock(&shard.mu);
  if (shard.index.contains(id)) return -1;
  uint32_t slot = ~0u;
  if (!shard.free_list.empty()) {
    slot = shard.free_list.back();
    shard.free_list.pop_back();
  } else if (shard.used < shard.num_slots) {
    slot = shard.used++;
  } else {
    // Two sweeps clear every reference bit; a third finds a victim unless all are pinned.
    for (uint64_t step = 0; step < 3ull * shard.num_slots; ++step) {
      const uint32_t h = shard.hand;
      shard.hand = (shard.hand + 1 == shard.num_slots) ? 0 : shard.hand + 1;
      if (shard.pins[h].load(std::memory_order_acquire) != 0) continue;
      if (shard.referenced[h]) {
        shard.referenced[h] = 0;
        continue;
      }
      slot = h;
      break;
    }
    if (slot == ~0u) return -1;
    if (shard.slot_id[slot] != kNoRow) {
      shard.index.erase(shard.slot_id[slot]);
      shard.resident.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  shard.slot_id[slot] = kNoRow;
  shard.referenced[slot] = 0;
  shard.pins[slot].fetch_add(1, std::memory_order_relaxed);
  return shard.first + slot;
}

void SlotMap::Publish(RowId id, int64_t slot) {
  Shard& shard = ShardOfSlot(slot);
  const uint32_t local = static_cast<uint32_t>(slot - shard.first);
  {
    absl::MutexLock lock(&shard.mu);
    if (shard.index.contains(id)) {
      shard.free_list.push_back(local);
    } else {
      shard.index.emplace(id, local);
      shard.slot_id[local] = id;
      // New rows start unreferenced: a row read once is the first to go (scan resistance).
      shard.referenced[local] = 0;
      shard.resident.fetch_add(1, std::memory_order_relaxed);
    }
  }
  shard.pins[local].fetch_sub(1, std::memory_order_release);
}

void SlotMap::Abandon(int64_t slot) {
  Shard& shard = ShardOfSlot(slot);
  const uint32_t local = static_cast<uint32_t>(slot - shard.first);
  {
    absl::MutexLock lock(&shard.mu);
    shard.free_list.push_back(local);
  }
  shard.pins[local].fetch_sub(1, std::memory_order_release);
}

}  // namespace ultramem::memory
