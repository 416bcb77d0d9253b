// SlotMap (the GPU hot tier's host-side index): hits and misses, CLOCK eviction that never takes
// a pinned or reserved slot, duplicate promotions, and many threads at once.
#include "memory_server/slot_map.h"

#include <atomic>
#include <random>
#include <set>
#include <thread>

#include "gtest/gtest.h"

namespace ultramem::memory {
namespace {

TEST(SlotMap, ReservePublishPinAndEvict) {
  SlotMap map(4);
  int64_t slots[8];
  RowId ids[4] = {1, 2, 3, 4};
  EXPECT_EQ(map.Pin(ids, 4, slots), 0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(slots[i], -1);
  std::set<int64_t> used;
  for (RowId id : ids) {
    const int64_t s = map.Reserve(id);
    ASSERT_GE(s, 0);
    ASSERT_LT(s, 4);
    used.insert(s);
    map.Publish(id, s);
  }
  EXPECT_EQ(used.size(), 4u);
  EXPECT_EQ(map.resident(), 4);
  EXPECT_EQ(map.Reserve(2), -1);  // already resident
  // Pin rows 1..3; row 4 is the only victim.
  EXPECT_EQ(map.Pin(ids, 3, slots), 3);
  int64_t slot4;
  ASSERT_EQ(map.Pin(&ids[3], 1, &slot4), 1);
  map.Release(&slot4, 1);
  const int64_t s5 = map.Reserve(5);
  EXPECT_EQ(s5, slot4);
  // Everything pinned or reserved now: nothing to give.
  EXPECT_EQ(map.Reserve(6), -1);
  map.Publish(5, s5);
  RowId four = 4, five = 5;
  int64_t got;
  EXPECT_EQ(map.Pin(&four, 1, &got), 0);  // evicted
  EXPECT_EQ(map.Pin(&five, 1, &got), 1);
  EXPECT_EQ(got, s5);
  map.Release(&got, 1);
  map.Release(slots, 3);
  // A duplicate promotion frees its slot; an abandoned reservation too.
  const int64_t a = map.Reserve(7);
  ASSERT_GE(a, 0);
  map.Publish(7, a);
  EXPECT_EQ(map.resident(), 4);
  const int64_t b = map.Reserve(8);
  ASSERT_GE(b, 0);
  map.Abandon(b);
  EXPECT_EQ(map.resident(), 3);
  EXPECT_EQ(map.Reserve(8), b);  // the freed slot comes back first
}

TEST(SlotMap, EmptyMapMissesAndDeclines) {
  SlotMap map(0);
  RowId id = 1;
  int64_t slot = 5;
  EXPECT_EQ(map.Pin(&id, 1, &slot), 0);
  EXPECT_EQ(slot, -1);
  EXPECT_EQ(map.Reserve(1), -1);
}

// Threads pin, reserve and publish random rows; a slot that is pinned must keep its row: each
// thread checks, while it holds a pin, that the slot's recorded owner is the row it pinned.
TEST(SlotMap, ConcurrentUseNeverHandsOutAPinnedSlot) {
  constexpr int64_t kSlots = 2048;
  SlotMap map(kSlots);
  std::vector<std::atomic<int64_t>> owner(kSlots);
  for (auto& o : owner) o.store(-1);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 20000; ++i) {
        const RowId id = rng() % 6000;
        int64_t slot;
        if (map.Pin(&id, 1, &slot) == 1) {
          if (owner[slot].load() != static_cast<int64_t>(id)) errors.fetch_add(1);
          map.Release(&slot, 1);
        } else {
          const int64_t s = map.Reserve(id);
          if (s < 0) continue;
          owner[s].store(static_cast<int64_t>(id));  // the "write" of the row
          map.Publish(id, s);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_LE(map.resident(), kSlots);
  EXPECT_GT(map.resident(), kSlots / 2);
}

}  // namespace
}  // namespace ultramem::memory
