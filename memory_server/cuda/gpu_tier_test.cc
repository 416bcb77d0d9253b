// The GPU hot tier (ValueStore with device cuda) against the CPU hot tier on the same store:
// full preload and small capacities with misses promoted into slots, uniform and ragged requests,
// the vector and scalar kernels, synthetic stores filled on the device, and many threads at once.
// Bound: both tiers pool bf16 rows with fp32 accumulation in the same selection order, so they
// differ only by FMA contraction: max |gpu - cpu| <= 1e-5 * max(1, max |cpu|). Synthetic fills
// must be bit-exact. Skips, saying why, on a machine without a CUDA device.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include "common/checkpoint_writer.h"
#include "common/synthetic_values.h"
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

bool SkipWithoutDevice() {
  const absl::Status s = CheckDeviceAvailable(DeviceSpec{DeviceSpec::Kind::kCuda, 0});
  if (s.ok()) return false;
  std::fprintf(stderr, "*** GPU TEST SKIPPED: %s ***\n", s.ToString().c_str());
  return true;
}

#define SKIP_WITHOUT_DEVICE()                                         \
  if (SkipWithoutDevice())                                            \
  GTEST_SKIP() << "no CUDA device: GPU tests run on the GPU machine " \
                  "(bench/gpu/memory_gpu.sh)"

// T tokens with ragged selection counts (some empty) when `ragged`, else K each.
Selections MakeSelections(std::mt19937_64& rng, int layer, int T, int K, int64_t row_begin,
                          int64_t row_end, bool ragged) {
  if (!ragged) return RandomSelections(rng, layer, T, K, row_begin, row_end, 4, 2);
  Selections sel = RandomSelections(rng, layer, 1, T * K, row_begin, row_end, 4, 2);
  sel.num_tokens = T;
  std::vector<int32_t> cuts;
  for (int t = 1; t < T; ++t) cuts.push_back(static_cast<int32_t>(rng() % (T * K + 1)));
  std::sort(cuts.begin(), cuts.end());
  sel.offsets = {0};
  for (int32_t c : cuts) sel.offsets.push_back(c);
  sel.offsets.push_back(T * K);
  return sel;
}

std::unique_ptr<ValueStore> OpenStore(const std::string& dir, const std::string& device,
                                      int64_t capacity) {
  ValueStoreOptions options;
  options.device = device;
  options.hot_capacity_bytes = capacity;
  auto store = ValueStore::Open(dir, "", options, nullptr);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// Runs a lookup of `sel` on `store`; gtest-fails on an error.
std::vector<float> RunLookup(const ValueStore& store, const Selections& sel, bool uniform,
                             LookupScratch* scratch, LookupStats* stats) {
  DecodedLookup decoded;
  absl::Status s =
      DecodeLookupRequest(MakeRequest(sel, 2, uniform), store.manifest(), {}, &decoded);
  EXPECT_TRUE(s.ok()) << s;
  std::vector<float> out(static_cast<size_t>(sel.num_tokens) * store.manifest().expand *
                         store.width());
  s = store.Lookup(decoded, scratch, out.data(), stats);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// max |a - b| / max(1, max |b|).
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 1;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / scale;
}

constexpr double kBound = 1e-5;

struct Shape {
  int value_dim, col_begin, col_end;
};

class GpuTierTest : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_DEVICE();
    const Shape shape = GetParam();
    const std::string model = dir_.path() + "/model";
    store_dir_ = dir_.path() + "/store";
    testing::WriteSmallCheckpoint(model, testing::SmallConfig(32, shape.value_dim), DType::kF32, 5);
    ImportOptions options;
    options.checkpoint_dir = model;
    options.store_dir = store_dir_;
    options.version = "v1";
    options.row_begin = kRowBegin;
    options.row_end = kRowEnd;
    options.col_begin = shape.col_begin;
    options.col_end = shape.col_end;
    options.store_dtype = "bf16";
    auto result = RunImport(options);
    ASSERT_TRUE(result.ok()) << result.status();
    total_ = result->manifest.TotalBytes();
    row_bytes_ = static_cast<int64_t>(result->manifest.RowBytes());
    cpu_ = OpenStore(store_dir_, "cpu", total_);
    ASSERT_NE(cpu_, nullptr);
  }

  static constexpr int64_t kRowBegin = 64, kRowEnd = 1000;
  testing::TempDir dir_;
  std::string store_dir_;
  int64_t total_ = 0, row_bytes_ = 0;
  std::unique_ptr<ValueStore> cpu_;
};

TEST_P(GpuTierTest, EqualsTheCpuTierAtEveryCapacity) {
  struct Case {
    int64_t capacity;
    const char* kind;
  };
  for (const Case& c : {Case{total_, "gpu-full"}, Case{total_ / 10, "gpu-clock"},
                        Case{16 * row_bytes_, "gpu-clock"}, Case{0, "gpu-none"}}) {
    SCOPED_TRACE(c.kind + std::string(" ") + std::to_string(c.capacity));
    auto gpu = OpenStore(store_dir_, "cuda", c.capacity);
    ASSERT_NE(gpu, nullptr);
    EXPECT_EQ(gpu->hot_info().kind, c.kind);
    EXPECT_NE(gpu->hot_info().device.find("cuda:0"), std::string::npos) << gpu->hot_info().device;
    LookupScratch gs, cs;
    LookupStats stats;
    for (int pass = 0; pass < 2; ++pass) {  // the same rows again: promoted rows now hit
      std::mt19937_64 rng(17);
      for (int i = 0; i < 60; ++i) {
        const int T = 1 + static_cast<int>(rng() % 9);
        const bool ragged = i % 3 == 0;
        Selections sel = MakeSelections(rng, i % 2, T, 24, kRowBegin, kRowEnd, ragged);
        const auto want = RunLookup(*cpu_, sel, !ragged, &cs, nullptr);
        const auto got = RunLookup(*gpu, sel, !ragged, &gs, &stats);
        ASSERT_LE(RelativeError(got, want), kBound) << "pass " << pass << " lookup " << i;
      }
    }
    if (c.capacity == total_) {
      EXPECT_EQ(stats.cold_rows, 0);
    }
    if (c.capacity == 0) {
      EXPECT_EQ(stats.hot_rows, 0);
    }
    if (c.capacity == total_ / 10) {
      EXPECT_GT(stats.hot_rows, 0);
      EXPECT_GT(stats.cold_rows, 0);
    }
    EXPECT_LE(gpu->hot_info().bytes_used, c.capacity);
  }
}

TEST_P(GpuTierTest, ConcurrentLookupsStayEqual) {
  for (int64_t capacity : {total_, total_ / 8}) {
    auto gpu = OpenStore(store_dir_, "cuda", capacity);
    ASSERT_NE(gpu, nullptr);
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(100 + t);
        LookupScratch gs, cs;
        for (int i = 0; i < 80; ++i) {
          Selections sel = MakeSelections(rng, i % 2, 1 + static_cast<int>(rng() % 16), 32,
                                          kRowBegin, kRowEnd, i % 4 == 0);
          const auto want = RunLookup(*cpu_, sel, i % 4 != 0, &cs, nullptr);
          const auto got = RunLookup(*gpu, sel, i % 4 != 0, &gs, nullptr);
          if (RelativeError(got, want) > kBound) bad.fetch_add(1);
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(bad.load(), 0) << "capacity " << capacity;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuTierTest,
                         ::testing::Values(Shape{64, 16, 48},   // vector kernel, cores split
                                           Shape{512, 0, 512},  // decode-sized rows
                                           Shape{64, 3, 45}),   // scalar kernel (unaligned)
                         [](const auto& info) {
                           return "Dv" + std::to_string(info.param.value_dim) + "_cols" +
                                  std::to_string(info.param.col_begin) + "_" +
                                  std::to_string(info.param.col_end);
                         });

TEST(GpuTierSynthetic, DeviceFillEqualsTheHostFunctionAndTheCpuTier) {
  SKIP_WITHOUT_DEVICE();
  testing::TempDir dir;
  const SyntheticValues spec{23, 0.25f};
  RandomCheckpointOptions ckpt;
  ckpt.split_files = true;
  ckpt.synthetic_values = spec;
  ASSERT_TRUE(
      WriteRandomCheckpoint(dir.path() + "/model", testing::SmallConfig(64, 256), ckpt).ok());
  ImportOptions options;
  options.checkpoint_dir = dir.path() + "/model";
  options.store_dir = dir.path() + "/store";
  options.version = "s1";
  options.col_begin = 8;
  options.col_end = 200;
  auto result = RunImport(options);
  ASSERT_TRUE(result.ok()) << result.status();
  const StoreManifest& m = result->manifest;
  const int64_t N = m.num_rows;
  const int width = 192;
  auto cpu = OpenStore(options.store_dir, "cpu", m.TotalBytes());
  auto gpu = OpenStore(options.store_dir, "cuda", m.TotalBytes());
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->hot_info().kind, "gpu-full");
  // Every row of both layers read back through the device: one selection of weight 1 a token.
  LookupScratch scratch;
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t r0 = 0; r0 < N; r0 += 512) {
      const int T = static_cast<int>(std::min<int64_t>(512, N - r0));
      Selections sel;
      sel.layer = layer;
      sel.num_tokens = T;
      for (int t = 0; t <= T; ++t) sel.offsets.push_back(t);
      for (int t = 0; t < T; ++t) {
        sel.rows.push_back(r0 + t);
        sel.groups.push_back(t % 4);
        sel.weights.insert(sel.weights.end(), {1.0f, 1.0f});
      }
      const auto got = RunLookup(*gpu, sel, true, &scratch, nullptr);
      std::vector<uint16_t> row(width);
      for (int t = 0; t < T; ++t) {
        FillSyntheticBf16(spec, layer, r0 + t, r0 + t + 1, 8, 200, row.data());
        for (int c = 0; c < width; ++c) {
          const float want = Bf16ToF32(row[c]);
          ASSERT_EQ(got[(static_cast<size_t>(t) * 4 + t % 4) * width + c], want)
              << "layer " << layer << " row " << r0 + t << " col " << 8 + c;
        }
      }
    }
  }
  // Random lookups: the full device tier and a small one (misses computed on the host, promoted)
  // against the CPU tier.
  auto small = OpenStore(options.store_dir, "cuda", m.TotalBytes() / 20);
  ASSERT_NE(small, nullptr);
  std::mt19937_64 rng(4);
  LookupScratch cs, ss;
  LookupStats stats;
  for (int i = 0; i < 100; ++i) {
    Selections sel = MakeSelections(rng, i % 2, 1 + i % 7, 32, 0, N, i % 5 == 0);
    const auto want = RunLookup(*cpu, sel, i % 5 != 0, &cs, nullptr);
    ASSERT_LE(RelativeError(RunLookup(*gpu, sel, i % 5 != 0, &scratch, nullptr), want), kBound)
        << i;
    ASSERT_LE(RelativeError(RunLookup(*small, sel, i % 5 != 0, &ss, &stats), want), kBound) << i;
  }
  EXPECT_GT(stats.cold_rows, 0);
}

}  // namespace
}  // namespace ultramem::memory
