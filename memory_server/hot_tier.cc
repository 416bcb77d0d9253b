// Implementation of memory_server/hot_tier.h (host-RAM tiers).
#include "memory_server/hot_tier.h"

#include <atomic>
#include <cstring>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

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

namespace {
constexpr int kMaxShards = 16;
constexpr uint32_t kEmpty = ~0u;

inline uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

struct ClockHotTier::Shard {
  absl::Mutex mu;
  absl::flat_hash_map<RowId, uint32_t> index ABSL_GUARDED_BY(mu);
  std::vector<RowId> slot_id ABSL_GUARDED_BY(mu);
  std::vector<uint8_t> referenced ABSL_GUARDED_BY(mu);
  // Pins are taken under mu and dropped without it; eviction (under mu) skips pinned slots.
  std::unique_ptr<std::atomic<int32_t>[]> pins;
  std::unique_ptr<uint8_t[]> data;
  uint32_t num_slots = 0;
  uint32_t used ABSL_GUARDED_BY(mu) = 0;
  uint32_t hand ABSL_GUARDED_BY(mu) = 0;
  std::atomic<int64_t> resident{0};
};

ClockHotTier::ClockHotTier(int64_t capacity_bytes, size_t row_bytes)
    : capacity_bytes_(capacity_bytes), row_bytes_(row_bytes) {
  num_slots_ = row_bytes == 0 ? 0 : capacity_bytes / static_cast<int64_t>(row_bytes);
  const int num_shards = num_slots_ >= 1024 ? kMaxShards : 1;
  for (int s = 0; s < num_shards; ++s) {
    auto shard = std::make_unique<Shard>();
    shard->num_slots = static_cast<uint32_t>(num_slots_ / num_shards + (s < num_slots_ % num_shards));
    shard->slot_id.assign(shard->num_slots, 0);
    shard->referenced.assign(shard->num_slots, 0);
    shard->pins.reset(new std::atomic<int32_t>[shard->num_slots]);
    for (uint32_t i = 0; i < shard->num_slots; ++i) shard->pins[i].store(0);
    shard->data.reset(new uint8_t[shard->num_slots * row_bytes]);
    shard->index.reserve(shard->num_slots);
    shards_.push_back(std::move(shard));
  }
}

ClockHotTier::~ClockHotTier() = default;

ClockHotTier::Shard& ClockHotTier::ShardOf(RowId id) const {
  return *shards_[Mix(id) % shards_.size()];
}

int64_t ClockHotTier::bytes_used() const {
  int64_t rows = 0;
  for (const auto& s : shards_) rows += s->resident.load(std::memory_order_relaxed);
  return rows * static_cast<int64_t>(row_bytes_);
}

int ClockHotTier::Pin(const RowId* ids, int n, const uint8_t** rows, PinHandle* handles) {
  if (num_slots_ == 0) {
    for (int i = 0; i < n; ++i) rows[i] = nullptr;
    return 0;
  }
  int hits = 0;
  for (int i = 0; i < n; ++i) {
    const size_t shard_index = Mix(ids[i]) % shards_.size();
    Shard& shard = *shards_[shard_index];
    absl::MutexLock lock(&shard.mu);
    auto it = shard.index.find(ids[i]);
    if (it == shard.index.end()) {
      rows[i] = nullptr;
      continue;
    }
    const uint32_t slot = it->second;
    shard.referenced[slot] = 1;
    shard.pins[slot].fetch_add(1, std::memory_order_relaxed);
    rows[i] = shard.data.get() + static_cast<size_t>(slot) * row_bytes_;
    handles[i] = (static_cast<uint64_t>(shard_index) << 32) | slot;
    ++hits;
  }
  return hits;
}

void ClockHotTier::Release(const uint8_t* const* rows, const PinHandle* handles, int n) {
  if (num_slots_ == 0) return;
  for (int i = 0; i < n; ++i) {
    if (rows[i] == nullptr) continue;
    Shard& shard = *shards_[handles[i] >> 32];
    shard.pins[static_cast<uint32_t>(handles[i])].fetch_sub(1, std::memory_order_release);
  }
}

void ClockHotTier::Admit(RowId id, const uint8_t* row) {
  if (num_slots_ == 0) return;
  Shard& shard = ShardOf(id);
  if (shard.num_slots == 0) return;
  absl::MutexLock lock(&shard.mu);
  if (shard.index.contains(id)) return;
  uint32_t slot = kEmpty;
  if (shard.used < shard.num_slots) {
    slot = shard.used++;
    shard.resident.fetch_add(1, std::memory_order_relaxed);
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
    if (slot == kEmpty) return;  // everything pinned: decline
    shard.index.erase(shard.slot_id[slot]);
  }
  std::memcpy(shard.data.get() + static_cast<size_t>(slot) * row_bytes_, row, row_bytes_);
  shard.slot_id[slot] = id;
  // New rows start unreferenced: a row read once is the first to go (scan resistance).
  shard.referenced[slot] = 0;
  shard.index.emplace(id, slot);
}

}  // namespace ultramem::memory
