// The host side of the GPU hot tier (value_store_gpu.cc with slot_map.h) in CPU-only CI: the
// registry is pointed at a host emulation of gpu_hot_tier.h (slots in RAM, common/pooling.h's
// kernel), and ValueStore on device "cuda" must equal ValueStore on "cpu" bit for bit at every
// capacity (full, CLOCK with misses promoted, none), over repeated and concurrent lookups. The
// real device side is checked against the CPU tier by memory_server/cuda/gpu_tier_test.cc.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "common/checkpoint_writer.h"
#include "common/pooling.h"
#include "gtest/gtest.h"
#include "memory_server/gpu_hot_tier.h"
#include "memory_server/importer.h"
#include "memory_server/request_decoder.h"
#include "memory_server/tests/test_util.h"
#include "memory_server/value_store.h"

namespace ultramem::memory {
namespace {

using testing::MakeRequest;
using testing::RandomSelections;
using testing::Selections;

// gpu_hot_tier.h on the host. Counts the promotions it performs.
class HostEmulatedGpuTier final : public GpuHotTier {
 public:
  explicit HostEmulatedGpuTier(const GpuHotTierOptions& o)
      : o_(o), table_(static_cast<size_t>(o.num_slots) * o.width) {}
  int64_t num_slots() const override { return o_.num_slots; }
  std::string device_name() const override { return "host emulation (cuda:0)"; }
  absl::Status Upload(int64_t first, int64_t n, const uint16_t* rows) override {
    if (first < 0 || first + n > o_.num_slots) return absl::InvalidArgumentError("upload");
    std::memcpy(table_.data() + first * o_.width, rows, static_cast<size_t>(n) * o_.width * 2);
    return absl::OkStatus();
  }
  absl::Status FillSynthetic(const SyntheticValues& spec, int layer, int64_t row_begin, int64_t n,
                             int64_t first) override {
    if (first < 0 || first + n > o_.num_slots) return absl::InvalidArgumentError("fill");
    FillSyntheticBf16(spec, layer, row_begin, row_begin + n, o_.col_begin, o_.col_begin + o_.width,
                      table_.data() + first * o_.width);
    return absl::OkStatus();
  }
  absl::Status Pool(const GpuPoolCall& call, double* seconds) override {
    std::vector<const uint16_t*> rows(call.num_selections);
    for (int s = 0; s < call.num_selections; ++s) {
      const int64_t slot = call.slots[s];
      if (slot >= o_.num_slots + call.num_extra) return absl::InvalidArgumentError("slot");
      rows[s] = slot < 0              ? nullptr
                : slot < o_.num_slots ? table_.data() + slot * o_.width
                                      : call.extra_rows + (slot - o_.num_slots) * o_.width;
    }
    PoolShape shape{1, 0, o_.expand, o_.value_dim, o_.cores, o_.col_begin, o_.col_begin + o_.width};
    const size_t stride = static_cast<size_t>(o_.expand) * o_.width;
    for (int t = 0; t < call.num_tokens; ++t) {
      const int b = call.offsets[t];
      shape.selections = call.offsets[t + 1] - b;
      PoolRowsBf16(shape, rows.data() + b, call.groups + b, call.scores + b * o_.cores,
                   call.out + t * stride);
    }
    for (int i = 0; i < call.num_extra && call.promote_to != nullptr; ++i) {
      if (call.promote_to[i] < 0) continue;
      std::memcpy(table_.data() + call.promote_to[i] * o_.width, call.extra_rows + i * o_.width,
                  o_.width * 2);
      promotions.fetch_add(1);
    }
    if (seconds != nullptr) *seconds = 0;
    return absl::OkStatus();
  }
  static inline std::atomic<int64_t> promotions{0};

 private:
  const GpuHotTierOptions o_;
  std::vector<uint16_t> table_;
};

class GpuPathTest : public ::testing::TestWithParam<bool /*synthetic*/> {
 protected:
  void SetUp() override {
    SetGpuHotTierFactoryForTesting([](const GpuHotTierOptions& o) {
      return absl::StatusOr<std::unique_ptr<GpuHotTier>>(std::make_unique<HostEmulatedGpuTier>(o));
    });
    const std::string model = dir_.path() + "/model";
    store_dir_ = dir_.path() + "/store";
    if (GetParam()) {
      RandomCheckpointOptions options;
      options.split_files = true;
      options.synthetic_values = SyntheticValues{5, 1.0f};
      ASSERT_TRUE(WriteRandomCheckpoint(model, testing::SmallConfig(), options).ok());
    } else {
      testing::WriteSmallCheckpoint(model, testing::SmallConfig(), DType::kBF16, 3);
    }
    ImportOptions options;
    options.checkpoint_dir = model;
    options.store_dir = store_dir_;
    options.version = "v1";
    options.row_begin = kRowBegin;
    options.row_end = kRowEnd;
    options.col_begin = 8;
    options.col_end = 56;
    auto result = RunImport(options);
    ASSERT_TRUE(result.ok()) << result.status();
    manifest_ = result->manifest;
    cpu_ = Open("cpu", manifest_.TotalBytes());
  }
  void TearDown() override { SetGpuHotTierFactoryForTesting(nullptr); }

  std::unique_ptr<ValueStore> Open(const std::string& device, int64_t capacity) {
    ValueStoreOptions options;
    options.device = device;
    options.hot_capacity_bytes = capacity;
    auto store = ValueStore::Open(store_dir_, "", options, nullptr);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  static std::vector<float> Lookup(const ValueStore& store, const Selections& sel, bool uniform,
                                   LookupScratch* scratch, LookupStats* stats) {
    DecodedLookup decoded;
    EXPECT_TRUE(
        DecodeLookupRequest(MakeRequest(sel, 2, uniform), store.manifest(), {}, &decoded).ok());
    std::vector<float> out(static_cast<size_t>(sel.num_tokens) * 4 * store.width());
    absl::Status s = store.Lookup(decoded, scratch, out.data(), stats);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  static constexpr int64_t kRowBegin = 100, kRowEnd = 700;
  testing::TempDir dir_;
  std::string store_dir_;
  StoreManifest manifest_;
  std::unique_ptr<ValueStore> cpu_;
};

TEST_P(GpuPathTest, EqualsTheCpuTierAtEveryCapacity) {
  const int64_t total = manifest_.TotalBytes(), row = static_cast<int64_t>(manifest_.RowBytes());
  struct Case {
    int64_t capacity;
    const char* kind;
  };
  for (const Case& c : {Case{total, "gpu-full"}, Case{total / 8, "gpu-clock"},
                        Case{5 * row, "gpu-clock"}, Case{0, "gpu-none"}}) {
    SCOPED_TRACE(c.capacity);
    auto gpu = Open("cuda", c.capacity);
    ASSERT_NE(gpu, nullptr);
    const HotTierInfo info = gpu->hot_info();
    EXPECT_EQ(info.kind, c.kind);
    EXPECT_EQ(info.device, "host emulation (cuda:0)");
    EXPECT_EQ(info.complete, c.capacity == total);
    const int64_t promoted_before = HostEmulatedGpuTier::promotions.load();
    LookupScratch gs, cs;
    LookupStats stats;
    for (int pass = 0; pass < 2; ++pass) {
      std::mt19937_64 rng(8);
      for (int i = 0; i < 50; ++i) {
        Selections sel = RandomSelections(rng, i % 2, 1 + i % 5, 20, kRowBegin, kRowEnd, 4, 2);
        const bool uniform = i % 3 != 0;
        ASSERT_EQ(Lookup(*gpu, sel, uniform, &gs, &stats),
                  Lookup(*cpu_, sel, uniform, &cs, nullptr))
            << "pass " << pass << " lookup " << i;
      }
    }
    const int64_t promoted = HostEmulatedGpuTier::promotions.load() - promoted_before;
    if (c.capacity == total) {
      EXPECT_EQ(stats.cold_rows, 0);
      EXPECT_EQ(promoted, 0);
    } else if (c.capacity == 0) {
      EXPECT_EQ(stats.hot_rows, 0);
      EXPECT_EQ(promoted, 0);
    } else {
      EXPECT_GT(promoted, 0);
      // Promoted rows hit on the second pass (5 slots keep too little for that).
      if (c.capacity == total / 8) {
        EXPECT_GT(stats.hot_rows, 0);
      }
      EXPECT_LE(gpu->hot_info().bytes_used, c.capacity);
    }
  }
}

TEST_P(GpuPathTest, ConcurrentLookupsWithPromotionsStayEqual) {
  auto gpu = Open("cuda", manifest_.TotalBytes() / 16);
  ASSERT_NE(gpu, nullptr);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      LookupScratch gs, cs;
      for (int i = 0; i < 100; ++i) {
        Selections sel = RandomSelections(rng, i % 2, 1 + i % 4, 16, kRowBegin, kRowEnd, 4, 2);
        if (Lookup(*gpu, sel, true, &gs, nullptr) != Lookup(*cpu_, sel, true, &cs, nullptr)) {
          bad.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST_P(GpuPathTest, AnF32StoreIsRefusedOnTheGpu) {
  ImportOptions options;
  options.checkpoint_dir = dir_.path() + "/model";
  options.store_dir = dir_.path() + "/f32";
  options.version = "v1";
  options.store_dtype = "f32";
  if (GetParam()) {  // synthetic stores are BF16 only: the import itself refuses f32
    EXPECT_FALSE(RunImport(options).ok());
    return;
  }
  ASSERT_TRUE(RunImport(options).ok());
  ValueStoreOptions store_options;
  store_options.device = "cuda";
  auto store = ValueStore::Open(options.store_dir, "", store_options, nullptr);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("bf16"), absl::string_view::npos) << store.status();
}

INSTANTIATE_TEST_SUITE_P(Stores, GpuPathTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Synthetic" : "Imported"; });

}  // namespace
}  // namespace ultramem::memory
