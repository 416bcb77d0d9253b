// The value store end to end in process: import a checkpoint, open the store at several hot-tier
// capacities, and check pooled lookups against the direct computation from the checkpoint.
#include "memory_server/value_store.h"

#include <filesystem>
#include <random>

#include "common/checkpoint.h"
#include "gtest/gtest.h"
#include "memory_server/importer.h"
#include "memory_server/request_decoder.h"
#include "memory_server/tests/test_util.h"

namespace ultramem::memory {
namespace {

using testing::DirectPool;
using testing::MakeRequest;
using testing::MaxAbsDiff;
using testing::RandomSelections;
using testing::Selections;
using testing::TempDir;

constexpr int64_t kRowBegin = 100, kRowEnd = 900;
constexpr int kColBegin = 16, kColEnd = 48;  // crosses the core boundary at 32 (Dv 64, h 2)

class ValueStoreTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    checkpoint_dir_ = dir_.path() + "/model";
    store_dir_ = dir_.path() + "/store";
    testing::WriteSmallCheckpoint(checkpoint_dir_, testing::SmallConfig(), GetParam(), 7);
    auto checkpoint = Checkpoint::Open(checkpoint_dir_, {.check_shuffle_index = false});
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = std::move(*checkpoint);
    ImportOptions options;
    options.checkpoint_dir = checkpoint_dir_;
    options.store_dir = store_dir_;
    options.version = "v1";
    options.row_begin = kRowBegin;
    options.row_end = kRowEnd;
    options.col_begin = kColBegin;
    options.col_end = kColEnd;
    options.chunk_rows = 128;
    options.target_value_bytes = 256;  // a few rows per key, keys straddle chunk ends
    auto result = RunImport(options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->chunks_written, 2 * 7);  // 800 rows / 128 per chunk, 2 layers
    manifest_ = result->manifest;
  }

  // Runs `rounds` random lookups and checks each against the checkpoint.
  void CheckLookups(const ValueStore& store, int rounds, uint64_t seed, LookupStats* stats) {
    std::mt19937_64 rng(seed);
    LookupScratch scratch;
    const bool bf16 = GetParam() == DType::kBF16;
    for (int i = 0; i < rounds; ++i) {
      const int layer = i % 2;
      Selections sel = RandomSelections(rng, layer, 3, 16, kRowBegin, kRowEnd, 4, 2);
      DecodedLookup decoded;
      ASSERT_TRUE(DecodeLookupRequest(MakeRequest(sel, 2, i % 3 != 0), store.manifest(), {},
                                      &decoded).ok());
      std::vector<float> out(3 * 4 * (kColEnd - kColBegin));
      absl::Status status = store.Lookup(decoded, &scratch, out.data(), stats);
      ASSERT_TRUE(status.ok()) << status;
      const std::vector<float> want = DirectPool(*checkpoint_, sel, kColBegin, kColEnd, bf16);
      ASSERT_LT(MaxAbsDiff(out, want), 1e-4) << "lookup " << i;
    }
  }

  TempDir dir_;
  std::string checkpoint_dir_, store_dir_;
  std::unique_ptr<Checkpoint> checkpoint_;
  StoreManifest manifest_;
};

TEST_P(ValueStoreTest, ManifestDescribesTheShard) {
  EXPECT_EQ(manifest_.version, "v1");
  EXPECT_EQ(manifest_.num_rows, 32 * 32);
  EXPECT_EQ(manifest_.expand, 4);
  EXPECT_EQ(manifest_.blocks.size(), 2u);
  EXPECT_EQ(manifest_.dtype, GetParam() == DType::kBF16 ? StoreDType::kBF16 : StoreDType::kF32);
  auto current = ReadCurrent(store_dir_);
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(*current, "v1");
}

TEST_P(ValueStoreTest, PooledLookupsEqualTheCheckpointAtEveryCapacity) {
  const int64_t total = manifest_.TotalBytes();
  const int64_t row = static_cast<int64_t>(manifest_.RowBytes());
  struct Case {
    int64_t capacity;
    const char* kind;
  };
  for (const Case& c : {Case{total, "full"}, Case{0, "none"}, Case{total / 10, "clock"},
                        Case{total / 2, "clock"}, Case{total - row, "clock"}, Case{3 * row, "clock"}}) {
    SCOPED_TRACE(c.capacity);
    ValueStoreOptions options;
    options.hot_capacity_bytes = c.capacity;
    auto store = ValueStore::Open(store_dir_, "", options, nullptr);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->hot_info().kind, c.kind);
    LookupStats stats;
    CheckLookups(**store, 60, 11, &stats);
    CheckLookups(**store, 60, 11, &stats);  // the same rows again: hot hits where admitted
    if (c.capacity == 0) EXPECT_EQ(stats.hot_rows, 0);
    if (c.capacity == total) EXPECT_EQ(stats.cold_rows, 0);
    if (std::string(c.kind) == "clock" && c.capacity >= total / 2) EXPECT_GT(stats.hot_rows, 0);
    EXPECT_LE((*store)->hot_info().bytes_used, std::max<int64_t>(c.capacity, 0));
  }
}

TEST_P(ValueStoreTest, RestartServesIdenticalResultsWithoutReimport) {
  auto run = [&](int64_t capacity) {
    ValueStoreOptions options;
    options.hot_capacity_bytes = capacity;
    auto store = ValueStore::Open(store_dir_, "", options, nullptr);
    EXPECT_TRUE(store.ok()) << store.status();
    std::mt19937_64 rng(5);
    std::vector<float> all;
    LookupScratch scratch;
    for (int i = 0; i < 10; ++i) {
      Selections sel = RandomSelections(rng, i % 2, 2, 8, kRowBegin, kRowEnd, 4, 2);
      DecodedLookup decoded;
      EXPECT_TRUE(DecodeLookupRequest(MakeRequest(sel, 2), (*store)->manifest(), {}, &decoded).ok());
      std::vector<float> out(2 * 4 * (kColEnd - kColBegin));
      EXPECT_TRUE((*store)->Lookup(decoded, &scratch, out.data(), nullptr).ok());
      all.insert(all.end(), out.begin(), out.end());
    }
    return all;
  };
  const std::vector<float> first = run(1 << 30);
  // The same command again finds the version complete and writes nothing.
  ImportOptions again;
  again.checkpoint_dir = checkpoint_dir_;
  again.store_dir = store_dir_;
  again.version = "v1";
  again.row_begin = kRowBegin;
  again.row_end = kRowEnd;
  again.col_begin = kColBegin;
  again.col_end = kColEnd;
  again.chunk_rows = 128;
  again.target_value_bytes = 256;
  auto result = RunImport(again);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->already_complete);
  EXPECT_EQ(run(1 << 30), first);  // bit-identical after a reopen
  EXPECT_EQ(run(0), first);        // and from RocksDB alone
}

TEST_P(ValueStoreTest, RefusesAnIncompleteVersionAndACorruptBlock) {
  // A version directory without a manifest is an unfinished import.
  std::filesystem::create_directories(VersionDbDir(store_dir_, "v2"));
  auto incomplete = ValueStore::Open(store_dir_, "v2", {}, nullptr);
  EXPECT_EQ(incomplete.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(incomplete.status().message().find("did not finish"), absl::string_view::npos);
  auto missing = ValueStore::Open(store_dir_, "v9", {}, nullptr);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  // A checksum that disagrees with the stored rows fails the preload.
  StoreManifest bad = manifest_;
  bad.blocks[1].crc32c ^= 1;
  ASSERT_TRUE(WriteFileAtomically(ManifestPath(store_dir_, "v1"), ManifestToJson(bad)).ok());
  auto corrupt = ValueStore::Open(store_dir_, "v1", {}, nullptr);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss);
}

TEST_P(ValueStoreTest, ImportRefusesADifferentPlanForAnExistingVersion) {
  ImportOptions other;
  other.checkpoint_dir = checkpoint_dir_;
  other.store_dir = store_dir_;
  other.version = "v1";
  other.row_begin = 0;
  other.row_end = 512;
  auto result = RunImport(other);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kAlreadyExists);
  other.version = "bad/name";
  EXPECT_EQ(RunImport(other).status().code(), absl::StatusCode::kInvalidArgument);
  other.version = "v3";
  other.row_end = 5000;
  EXPECT_EQ(RunImport(other).status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ValueStoreTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace ultramem::memory
