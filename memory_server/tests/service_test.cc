// The memory server in process over real sockets (loopback TCP and unix:): health and reflection,
// Info, pooled lookups against the checkpoint, every bad input's code, 16 concurrent clients,
// a version switch under load with no failed lookup, metrics, and drain.
#include "memory_server/memory_server.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <random>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "common/checkpoint.h"
#include "gtest/gtest.h"
#include "memory_server/importer.h"
#include "memory_server/tests/test_util.h"
#include "ultramem/v1/memory.grpc.pb.h"

namespace ultramem::memory {
namespace {

namespace v1 = ::ultramem::v1;
using testing::DirectPool;
using testing::MakeRequest;
using testing::MaxAbsDiff;
using testing::RandomSelections;
using testing::Selections;

constexpr int64_t kRowBegin = 128, kRowEnd = 896;
constexpr int kWidth = 64;

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    for (int v = 1; v <= 2; ++v) {
      const std::string model = dir_->path() + "/model" + std::to_string(v);
      testing::WriteSmallCheckpoint(model, testing::SmallConfig(), DType::kF32, 100 + v);
      auto checkpoint = Checkpoint::Open(model, {.check_shuffle_index = false});
      ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
      checkpoints_[v] = checkpoint->release();
      ImportOptions options;
      options.checkpoint_dir = model;
      options.store_dir = dir_->path() + "/store";
      options.version = "v" + std::to_string(v);
      options.model_id = "small";
      options.row_begin = kRowBegin;
      options.row_end = kRowEnd;
      options.activate = v == 1;  // v2 waits beside v1
      auto result = RunImport(options);
      ASSERT_TRUE(result.ok()) << result.status();
    }
  }
  static void TearDownTestSuite() {
    for (Checkpoint*& c : checkpoints_) delete c;
    delete dir_;
  }

  void TearDown() override {
    if (server_) server_->Shutdown();
    // Every version test may have moved CURRENT: put it back.
    ASSERT_TRUE(WriteCurrent(dir_->path() + "/store", "v1").ok());
  }

  void StartServer(int64_t hot_capacity_bytes, bool load = true, bool metrics = false) {
    MemoryServerOptions options;
    options.listen_addresses = {"127.0.0.1:0", "unix:" + dir_->path() + "/ms.sock"};
    options.metrics_address = metrics ? "127.0.0.1:0" : "";  // civetweb takes ~2 s to stop
    options.store_dir = dir_->path() + "/store";
    options.store.hot_capacity_bytes = hot_capacity_bytes;
    options.limits.max_batch_tokens = 16;
    options.limits.max_batch_selections = 512;
    options.current_poll_ms = 0;
    options.cold_threads = 4;
    auto server = MemoryServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    if (load) {
      absl::Status loaded = server_->Load();
      ASSERT_TRUE(loaded.ok()) << loaded;
    }
  }

  std::shared_ptr<grpc::Channel> Channel(int which = 0) {
    return grpc::CreateChannel(server_->addresses()[which], grpc::InsecureChannelCredentials());
  }

  static grpc::Status Call(v1::MemoryService::Stub& stub, const v1::LookupRequest& request,
                           v1::LookupResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub.Lookup(&context, request, response);
  }

  static testing::TempDir* dir_;
  static Checkpoint* checkpoints_[3];
  std::unique_ptr<MemoryServer> server_;
};

testing::TempDir* ServiceTest::dir_ = nullptr;
Checkpoint* ServiceTest::checkpoints_[3] = {nullptr, nullptr, nullptr};

TEST_F(ServiceTest, HealthInfoReflectionAndLookupsOverTcpAndUnix) {
  StartServer(64 << 20, /*load=*/false);
  auto channel = Channel();
  EXPECT_EQ(testing::HealthStatus(channel), "NOT_SERVING");
  auto stub = v1::MemoryService::NewStub(channel);
  std::mt19937_64 rng(1);
  Selections sel = RandomSelections(rng, 0, 2, 16, kRowBegin, kRowEnd, 4, 2);
  v1::LookupResponse response;
  grpc::Status status = Call(*stub, MakeRequest(sel, 2), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("loading"), std::string::npos);

  ASSERT_TRUE(server_->Load().ok());
  EXPECT_EQ(testing::HealthStatus(channel), "SERVING");
  const std::string services = testing::ReflectionServices(channel);
  EXPECT_NE(services.find("ultramem.v1.MemoryService"), std::string::npos);
  EXPECT_NE(services.find("grpc.health.v1.Health"), std::string::npos);

  grpc::ClientContext info_context;
  v1::InfoResponse info;
  ASSERT_TRUE(stub->Info(&info_context, v1::InfoRequest(), &info).ok());
  EXPECT_EQ(info.model_id(), "small");
  EXPECT_EQ(info.store_version(), "v1");
  ASSERT_EQ(info.blocks_size(), 2);
  EXPECT_EQ(info.blocks(1).layer(), 1u);
  EXPECT_EQ(info.blocks(1).row_begin(), kRowBegin);
  EXPECT_EQ(info.blocks(1).row_end(), kRowEnd);
  EXPECT_EQ(info.blocks(1).col_end(), 64u);
  EXPECT_EQ(info.num_rows(), 1024);
  EXPECT_EQ(info.expand(), 4u);
  EXPECT_EQ(info.value_dim(), 64u);
  EXPECT_EQ(info.num_cores(), 2u);
  EXPECT_TRUE(info.fully_hot());
  EXPECT_EQ(info.hot_tier(), "full");

  for (int which = 0; which < 2; ++which) {
    auto s = v1::MemoryService::NewStub(Channel(which));
    for (int i = 0; i < 6; ++i) {
      Selections q = RandomSelections(rng, i % 2, 1 + i % 3, 16, kRowBegin, kRowEnd, 4, 2);
      const bool bf16 = i % 2 == 1;
      v1::LookupResponse r;
      ASSERT_TRUE(Call(*s, MakeRequest(q, 2, i % 3 == 0, i % 4 == 0,
                                       bf16 ? v1::DTYPE_BF16 : v1::DTYPE_F32), &r).ok());
      EXPECT_EQ(r.num_tokens(), static_cast<uint32_t>(q.num_tokens));
      EXPECT_EQ(r.store_version(), "v1");
      const std::vector<float> want = DirectPool(*checkpoints_[1], q, 0, kWidth);
      const std::vector<float> got = testing::ResponseValues(r);
      if (bf16) {
        ASSERT_EQ(got.size(), want.size());
        for (size_t k = 0; k < got.size(); ++k) {
          ASSERT_NEAR(got[k], want[k], std::fabs(want[k]) / 128 + 1e-4) << k;
        }
      } else {
        ASSERT_LT(MaxAbsDiff(got, want), 1e-4);
      }
    }
  }
}

TEST_F(ServiceTest, EveryBadInputGetsItsCodeAndMessage) {
  StartServer(0, true, /*metrics=*/true);
  auto stub = v1::MemoryService::NewStub(Channel());
  std::mt19937_64 rng(2);
  Selections sel = RandomSelections(rng, 1, 2, 4, kRowBegin, kRowEnd, 4, 2);
  struct Case {
    const char* what;
    std::function<void(v1::LookupRequest*)> edit;
    grpc::StatusCode code;
    const char* words;
  };
  auto set_row = [](v1::LookupRequest* r, int64_t row) {
    std::string rows = r->rows();
    std::memcpy(rows.data() + 8 * 3, &row, 8);
    r->set_rows(rows);
  };
  const std::vector<Case> cases = {
      {"row outside", [&](v1::LookupRequest* r) { set_row(r, kRowEnd + 5); },
       grpc::StatusCode::OUT_OF_RANGE, "row 901 is outside this shard's rows [128, 896)"},
      {"group >= E", [](v1::LookupRequest* r) {
         std::string g = r->groups();
         const int32_t bad = 9;
         std::memcpy(g.data(), &bad, 4);
         r->set_groups(g);
       }, grpc::StatusCode::INVALID_ARGUMENT, "group 9 is outside [0, E = 4)"},
      {"non-finite weight", [](v1::LookupRequest* r) {
         std::string w = r->weights();
         const float nan = std::nanf("");
         std::memcpy(w.data() + 4, &nan, 4);
         r->set_weights(w);
       }, grpc::StatusCode::INVALID_ARGUMENT, "weight of core 1 is NaN"},
      {"sizes", [](v1::LookupRequest* r) { r->set_groups(r->groups().substr(4)); },
       grpc::StatusCode::INVALID_ARGUMENT, "groups has 28 bytes; want num_selections = 8"},
      {"unknown layer", [](v1::LookupRequest* r) { r->set_layer(7); },
       grpc::StatusCode::INVALID_ARGUMENT, "unknown memory layer 7"},
      {"batch over limit", [&](v1::LookupRequest* r) {
         *r = MakeRequest(RandomSelections(rng, 0, 17, 1, kRowBegin, kRowEnd, 4, 2), 2);
       }, grpc::StatusCode::RESOURCE_EXHAUSTED, "num_tokens 17 exceeds this server's limit of 16"},
  };
  for (const Case& c : cases) {
    v1::LookupRequest request = MakeRequest(sel, 2);
    c.edit(&request);
    v1::LookupResponse response;
    grpc::Status status = Call(*stub, request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.words), std::string::npos)
        << c.what << ": '" << status.error_message() << "'";
  }
  // The server is fine afterwards, and counted the errors.
  v1::LookupResponse response;
  EXPECT_TRUE(Call(*stub, MakeRequest(sel, 2), &response).ok());
  const std::string metrics = testing::ScrapeMetrics(server_->metrics_port());
  EXPECT_NE(metrics.find("ultramem_memory_errors_total{code=\"OUT_OF_RANGE\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("ultramem_memory_errors_total{code=\"INVALID_ARGUMENT\"} 4"), std::string::npos);
  EXPECT_NE(metrics.find("ultramem_memory_errors_total{code=\"RESOURCE_EXHAUSTED\"} 1"), std::string::npos);
}

TEST_F(ServiceTest, SixteenConcurrentClientsGetCorrectAnswers) {
  StartServer(/*20% of the shard=*/2 * 768 * 256 / 5, true, /*metrics=*/true);  // hot hits and cold reads mixed
  constexpr int kClients = 16, kCalls = 30;
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::MemoryService::NewStub(Channel(c % 2));
      std::mt19937_64 rng(1000 + c);
      for (int i = 0; i < kCalls; ++i) {
        Selections q = RandomSelections(rng, (c + i) % 2, 2, 32, kRowBegin, kRowEnd, 4, 2);
        v1::LookupResponse r;
        if (!Call(*stub, MakeRequest(q, 2), &r).ok()) {
          ++failed;
          continue;
        }
        if (MaxAbsDiff(testing::ResponseValues(r), DirectPool(*checkpoints_[1], q, 0, kWidth)) > 1e-4) {
          ++wrong;
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  const std::string metrics = testing::ScrapeMetrics(server_->metrics_port());
  for (const char* name :
       {"ultramem_memory_lookup_latency_seconds_count", "ultramem_memory_rows_served_total{tier=\"hot\"}",
        "ultramem_memory_rows_served_total{tier=\"cold\"}", "ultramem_memory_hot_hit_ratio",
        "ultramem_memory_hot_bytes", "ultramem_memory_rocksdb_read_latency_seconds_bucket",
        "ultramem_memory_requests_in_flight 0", "ultramem_memory_store_info{version=\"v1\"} 1"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name;
  }
}

TEST_F(ServiceTest, SwitchesVersionsUnderLoadWithoutAFailedLookup) {
  StartServer(1 << 30);
  constexpr int kClients = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0}, wrong{0};
  absl::Mutex mu;
  int saw_v2 = 0;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::MemoryService::NewStub(Channel(c % 2));
      std::mt19937_64 rng(50 + c);
      while (!stop.load()) {
        Selections q = RandomSelections(rng, c % 2, 1, 16, kRowBegin, kRowEnd, 4, 2);
        v1::LookupResponse r;
        if (!Call(*stub, MakeRequest(q, 2), &r).ok()) {
          ++failed;
          continue;
        }
        const int v = r.store_version() == "v2" ? 2 : 1;
        if (MaxAbsDiff(testing::ResponseValues(r), DirectPool(*checkpoints_[v], q, 0, kWidth)) > 1e-4) {
          ++wrong;
        }
        if (v == 2) {
          absl::MutexLock lock(&mu);
          ++saw_v2;
        }
      }
    });
  }
  ASSERT_TRUE(WriteCurrent(dir_->path() + "/store", "v2").ok());
  absl::Status reloaded = server_->Reload();
  EXPECT_TRUE(reloaded.ok()) << reloaded;
  EXPECT_EQ(server_->version(), "v2");
  {
    absl::MutexLock lock(&mu);
    auto enough = [&saw_v2]() { return saw_v2 >= 40; };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(30)));
  }
  stop = true;
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(ServiceTest, ShutdownDrainsInFlightLookups) {
  StartServer(0);  // every lookup reads RocksDB on the cold threads
  constexpr int kClients = 8;
  std::atomic<int> ok{0}, unavailable{0}, other{0}, started{0};
  absl::Mutex mu;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::MemoryService::NewStub(Channel(c % 2));
      std::mt19937_64 rng(7 + c);
      for (int i = 0; i < 1000; ++i) {
        Selections q = RandomSelections(rng, 0, 4, 64, kRowBegin, kRowEnd, 4, 2);
        v1::LookupResponse r;
        grpc::Status s = Call(*stub, MakeRequest(q, 2), &r);
        if (s.ok()) {
          ++ok;
          if (MaxAbsDiff(testing::ResponseValues(r), DirectPool(*checkpoints_[1], q, 0, kWidth)) > 1e-4) {
            ++other;
          }
        } else if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                   s.error_code() == grpc::StatusCode::CANCELLED) {
          // Refused: the server stopped accepting (a call racing the shutdown is cancelled before
          // it reaches the service; a client retries it elsewhere).
          ++unavailable;
          return;
        } else {
          ADD_FAILURE() << "code " << s.error_code() << ": " << s.error_message();
          ++other;
        }
        absl::MutexLock lock(&mu);  // Await re-evaluates its condition on unlock
        ++started;
      }
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto busy = [&started]() { return started.load() >= 40; };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&busy), absl::Seconds(30)));
  }
  server_->Shutdown();
  for (std::thread& t : clients) t.join();
  EXPECT_GE(ok.load(), 40);
  EXPECT_EQ(other.load(), 0);  // each call completed correctly or was refused: none cut off
  EXPECT_EQ(unavailable.load(), kClients);  // and then every client saw the server gone
}

}  // namespace
}  // namespace ultramem::memory
