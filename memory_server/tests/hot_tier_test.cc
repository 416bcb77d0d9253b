// The hot tiers: CLOCK eviction keeps referenced rows, never evicts pinned ones, declines when it
// must; the full tier maps every row.
#include "memory_server/hot_tier.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace ultramem::memory {
namespace {

std::vector<uint8_t> Row(uint8_t v) { return std::vector<uint8_t>(16, v); }

TEST(ClockHotTierTest, AdmitsPinsAndEvictsUnreferencedFirst) {
  ClockHotTier tier(4 * 16, 16);  // 4 slots
  EXPECT_EQ(tier.kind(), "clock");
  for (uint8_t i = 0; i < 4; ++i) tier.Admit(MakeRowId(0, i), Row(i).data());
  EXPECT_EQ(tier.bytes_used(), 64);
  // Touch rows 0 and 1 (reference bits set), then admit row 9: an unreferenced row (2 or 3) goes.
  RowId ids[2] = {MakeRowId(0, 0), MakeRowId(0, 1)};
  const uint8_t* rows[2];
  PinHandle handles[2];
  ASSERT_EQ(tier.Pin(ids, 2, rows, handles), 2);
  EXPECT_EQ(rows[1][0], 1);
  tier.Release(rows, handles, 2);
  tier.Admit(MakeRowId(0, 9), Row(9).data());
  EXPECT_EQ(tier.bytes_used(), 64);
  RowId all[5] = {MakeRowId(0, 0), MakeRowId(0, 1), MakeRowId(0, 2), MakeRowId(0, 3),
                  MakeRowId(0, 9)};
  const uint8_t* got[5];
  PinHandle h[5];
  EXPECT_EQ(tier.Pin(all, 5, got, h), 4);
  EXPECT_NE(got[0], nullptr);
  EXPECT_NE(got[1], nullptr);
  EXPECT_TRUE(got[2] == nullptr || got[3] == nullptr);
  ASSERT_NE(got[4], nullptr);
  EXPECT_EQ(got[4][15], 9);
  tier.Release(got, h, 5);
}

TEST(ClockHotTierTest, NeverEvictsPinnedRows) {
  ClockHotTier tier(2 * 16, 16);
  tier.Admit(MakeRowId(1, 0), Row(1).data());
  tier.Admit(MakeRowId(1, 1), Row(2).data());
  RowId ids[2] = {MakeRowId(1, 0), MakeRowId(1, 1)};
  const uint8_t* rows[2];
  PinHandle handles[2];
  ASSERT_EQ(tier.Pin(ids, 2, rows, handles), 2);
  tier.Admit(MakeRowId(1, 5), Row(5).data());  // declined: both pinned
  EXPECT_EQ(rows[0][0], 1);
  EXPECT_EQ(rows[1][0], 2);
  tier.Release(rows, handles, 2);
  tier.Admit(MakeRowId(1, 5), Row(5).data());  // now one goes
  RowId five = MakeRowId(1, 5);
  const uint8_t* got;
  PinHandle h;
  ASSERT_EQ(tier.Pin(&five, 1, &got, &h), 1);
  EXPECT_EQ(got[0], 5);
  tier.Release(&got, &h, 1);
}

TEST(ClockHotTierTest, ZeroCapacityHoldsNothing) {
  ClockHotTier tier(0, 16);
  EXPECT_EQ(tier.kind(), "none");
  tier.Admit(MakeRowId(0, 1), Row(1).data());
  RowId id = MakeRowId(0, 1);
  const uint8_t* got;
  PinHandle h;
  EXPECT_EQ(tier.Pin(&id, 1, &got, &h), 0);
  EXPECT_EQ(got, nullptr);
  EXPECT_EQ(tier.bytes_used(), 0);
}

TEST(FullHotTierTest, MapsEveryRowOfEveryBlock) {
  FullHotTier tier({3, 2}, 16);
  EXPECT_EQ(tier.capacity_bytes(), 5 * 16);
  std::memset(tier.MutableRow(1, 1), 7, 16);
  RowId id = MakeRowId(1, 1);
  const uint8_t* got;
  PinHandle h;
  ASSERT_EQ(tier.Pin(&id, 1, &got, &h), 1);
  EXPECT_EQ(got[3], 7);
}

}  // namespace
}  // namespace ultramem::memory
