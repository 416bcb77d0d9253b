// Synthetic stores (store_format.h) on the host tier: the import writes a manifest and no row,
// lookups at every capacity equal pooling the rows computed from common/synthetic_values.h, the
// server serves one over gRPC; and the --device option: bad names refused, a GPU refused with a
// clear FailedPrecondition where this build or machine has none.
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <random>

#include "common/checkpoint.h"
#include "common/checkpoint_writer.h"
#include "common/pooling.h"
#include "common/synthetic_values.h"
#include "gtest/gtest.h"
#include "memory_server/importer.h"
#include "memory_server/memory_server.h"
#include "memory_server/request_decoder.h"
#include "memory_server/tests/test_util.h"
#include "memory_server/value_store.h"
#include "ultramem/v1/memory.grpc.pb.h"

namespace ultramem::memory {
namespace {

using testing::MakeRequest;
using testing::MaxAbsDiff;
using testing::RandomSelections;
using testing::Selections;

constexpr int64_t kRowBegin = 100, kRowEnd = 900;
constexpr int kColBegin = 16, kColEnd = 48;  // crosses the core boundary at 32 (Dv 64, h 2)
constexpr SyntheticValues kSpec{/*seed=*/11, /*scale=*/0.5f};

// Step 10 over rows computed from the function, with common/pooling.h's kernel.
std::vector<float> PoolFromFunction(const Selections& sel, int expand, int value_dim, int cores) {
  const int width = kColEnd - kColBegin;
  std::vector<float> out(static_cast<size_t>(sel.num_tokens) * expand * width);
  for (int t = 0; t < sel.num_tokens; ++t) {
    const int begin = sel.offsets[t], n = sel.offsets[t + 1] - begin;
    std::vector<uint16_t> rows(static_cast<size_t>(n) * width);
    std::vector<const uint16_t*> ptrs(n);
    for (int k = 0; k < n; ++k) {
      FillSyntheticBf16(kSpec, sel.layer, sel.rows[begin + k], sel.rows[begin + k] + 1, kColBegin,
                        kColEnd, rows.data() + k * width);
      ptrs[k] = rows.data() + k * width;
    }
    PoolShape shape{1, n, expand, value_dim, cores, kColBegin, kColEnd};
    PoolRowsBf16(shape, ptrs.data(), sel.groups.data() + begin, sel.weights.data() + begin * cores,
                 out.data() + static_cast<size_t>(t) * expand * width);
  }
  return out;
}

class SyntheticStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    checkpoint_dir_ = dir_.path() + "/model";
    store_dir_ = dir_.path() + "/store";
    RandomCheckpointOptions options;
    options.split_files = true;
    options.synthetic_values = kSpec;
    ASSERT_TRUE(WriteRandomCheckpoint(checkpoint_dir_, testing::SmallConfig(), options).ok());
    auto checkpoint = Checkpoint::Open(checkpoint_dir_, {.check_shuffle_index = false});
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = std::move(*checkpoint);
    auto result = RunImport(Options("v1"));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->chunks_written, 0);
    EXPECT_EQ(result->bytes_written, 0);
    manifest_ = result->manifest;
  }

  ImportOptions Options(const std::string& version) {
    ImportOptions options;
    options.checkpoint_dir = checkpoint_dir_;
    options.store_dir = store_dir_;
    options.version = version;
    options.model_id = "synthetic-small";
    options.row_begin = kRowBegin;
    options.row_end = kRowEnd;
    options.col_begin = kColBegin;
    options.col_end = kColEnd;
    return options;
  }

  testing::TempDir dir_;
  std::string checkpoint_dir_, store_dir_;
  std::unique_ptr<Checkpoint> checkpoint_;
  StoreManifest manifest_;
};

TEST_F(SyntheticStoreTest, ImportWritesAManifestAndNoRows) {
  ASSERT_TRUE(manifest_.synthetic.has_value());
  EXPECT_EQ(manifest_.synthetic->seed, kSpec.seed);
  EXPECT_EQ(manifest_.synthetic->scale, kSpec.scale);
  EXPECT_EQ(manifest_.dtype, StoreDType::kBF16);
  ASSERT_EQ(manifest_.blocks.size(), 2u);
  EXPECT_EQ(manifest_.blocks[1].row_begin, kRowBegin);
  EXPECT_EQ(manifest_.blocks[1].crc32c, 0u);
  EXPECT_FALSE(std::filesystem::exists(VersionDbDir(store_dir_, "v1")));
  auto read = ReadManifest(store_dir_, "v1");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(ManifestToJson(*read), ManifestToJson(manifest_));
  EXPECT_EQ(*ReadCurrent(store_dir_), "v1");
  // The same command again: complete, nothing written; an F32 synthetic store is refused.
  auto again = RunImport(Options("v1"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_complete);
  ImportOptions f32 = Options("v2");
  f32.store_dtype = "f32";
  EXPECT_EQ(RunImport(f32).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SyntheticStoreTest, LookupsEqualPoolingTheFunctionsRowsAtEveryCapacity) {
  const int64_t total = manifest_.TotalBytes();
  for (int64_t capacity : {total, int64_t{0}, total / 10}) {
    SCOPED_TRACE(capacity);
    ValueStoreOptions options;
    options.hot_capacity_bytes = capacity;
    auto store = ValueStore::Open(store_dir_, "", options, nullptr);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->hot_info().complete, capacity == total);
    std::mt19937_64 rng(3);
    LookupScratch scratch;
    LookupStats stats;
    for (int i = 0; i < 40; ++i) {
      Selections sel = RandomSelections(rng, i % 2, 3, 16, kRowBegin, kRowEnd, 4, 2);
      DecodedLookup decoded;
      ASSERT_TRUE(
          DecodeLookupRequest(MakeRequest(sel, 2, i % 3 != 0), (*store)->manifest(), {}, &decoded)
              .ok());
      std::vector<float> out(3 * 4 * (kColEnd - kColBegin));
      absl::Status status = (*store)->Lookup(decoded, &scratch, out.data(), &stats);
      ASSERT_TRUE(status.ok()) << status;
      // Same kernel, same rows, same order: bit-identical.
      ASSERT_EQ(out, PoolFromFunction(sel, 4, 64, 2)) << "lookup " << i;
      // And the checkpoint's own view of the values (double accumulation).
      ASSERT_LT(MaxAbsDiff(out, testing::DirectPool(*checkpoint_, sel, kColBegin, kColEnd, true)),
                1e-5);
    }
    if (capacity == total) {
      EXPECT_EQ(stats.cold_rows, 0);
    }
    if (capacity == 0) {
      EXPECT_EQ(stats.hot_rows, 0);
    }
  }
}

TEST_F(SyntheticStoreTest, ServerServesASyntheticShard) {
  MemoryServerOptions options;
  options.listen_addresses = {"127.0.0.1:0"};
  options.metrics_address = "";
  options.store_dir = store_dir_;
  options.current_poll_ms = 0;
  auto server = MemoryServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->Load().ok());
  auto stub = ultramem::v1::MemoryService::NewStub(
      grpc::CreateChannel((*server)->addresses()[0], grpc::InsecureChannelCredentials()));
  grpc::ClientContext info_context;
  ultramem::v1::InfoResponse info;
  ASSERT_TRUE(stub->Info(&info_context, ultramem::v1::InfoRequest(), &info).ok());
  EXPECT_EQ(info.model_id(), "synthetic-small");
  EXPECT_EQ(info.hot_tier(), "full");
  EXPECT_TRUE(info.fully_hot());
  ASSERT_EQ(info.blocks_size(), 2);
  EXPECT_EQ(info.blocks(0).col_begin(), static_cast<uint32_t>(kColBegin));
  EXPECT_EQ(info.store_dtype(), ultramem::v1::DTYPE_BF16);
  std::mt19937_64 rng(9);
  for (int i = 0; i < 8; ++i) {
    Selections sel = RandomSelections(rng, i % 2, 2, 16, kRowBegin, kRowEnd, 4, 2);
    grpc::ClientContext context;
    ultramem::v1::LookupResponse response;
    ASSERT_TRUE(stub->Lookup(&context, MakeRequest(sel, 2), &response).ok());
    EXPECT_EQ(testing::ResponseValues(response), PoolFromFunction(sel, 4, 64, 2));
  }
  (*server)->Shutdown();
}

TEST(DeviceOption, BadNamesAndMissingDevicesAreRefused) {
  EXPECT_TRUE(ParseDevice("cpu").ok());
  EXPECT_EQ(ParseDevice("cuda:1")->index, 1);
  EXPECT_TRUE(ParseDevice("cuda")->is_gpu());
  EXPECT_EQ(ParseDevice("tpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDevice("cuda:x").status().code(), absl::StatusCode::kInvalidArgument);
  // The store is not even read when the device is missing; the server refuses before binding.
  ValueStoreOptions options;
  options.device = "cuda:0";
  const absl::Status available = CheckDeviceAvailable(*ParseDevice("cuda:0"));
  if (available.ok()) {
    GTEST_SKIP() << "this build and machine have a CUDA device: the GPU tests cover it";
  }
  EXPECT_EQ(available.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(available.message().find("CUDA"), absl::string_view::npos) << available;
  std::printf("refused as expected: %s\n", available.ToString().c_str());
  auto store = ValueStore::Open("/nonexistent", "", options, nullptr);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  MemoryServerOptions server_options;
  server_options.store_dir = "/nonexistent";
  server_options.metrics_address = "";
  server_options.listen_addresses = {"127.0.0.1:0"};
  server_options.store.device = "cuda";
  EXPECT_EQ(MemoryServer::Start(server_options).status().code(),
            absl::StatusCode::kFailedPrecondition);
  server_options.store.device = "gpu";
  EXPECT_EQ(MemoryServer::Start(server_options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ultramem::memory
