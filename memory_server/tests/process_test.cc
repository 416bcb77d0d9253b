// The two programs as processes: kill -9 in the middle of an import leaves a store that is
// refused and then resumed; the server serves it, survives a killed import of the next version,
// drains and exits 0 on SIGTERM, restarts without re-import with identical results, and switches
// to a new version published beside the old one with no failed lookup.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/checkpoint.h"
#include "gtest/gtest.h"
#include "memory_server/tests/test_util.h"
#include "memory_server/value_store.h"
#include "ultramem/v1/memory.grpc.pb.h"

extern char** environ;

namespace ultramem::memory {
namespace {

namespace v1 = ::ultramem::v1;
using Clock = std::chrono::steady_clock;

// A child process with stdout and stderr on one pipe.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fds[0];
    pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    EXPECT_GE(pidfd_, 0);
  }
  ~Child() {
    if (!reaped_) {
      kill(pid_, SIGKILL);
      Wait(std::chrono::seconds(30));
    }
    close(out_);
    close(pidfd_);
  }

  // Reads output until a line starting with `prefix` (returned) or EOF/deadline ("").
  std::string WaitForLine(const std::string& prefix, std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      size_t nl;
      while ((nl = buffer_.find('\n')) != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        all_ += line + "\n";
        if (line.rfind(prefix, 0) == 0) return line;
      }
      if (!ReadSome(deadline)) return "";
    }
  }
  // Reads everything until EOF (or the deadline) and returns all output seen.
  std::string ReadAll(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (ReadSome(deadline)) {
    }
    all_ += buffer_;
    buffer_.clear();
    return all_;
  }
  // Waits for the exit; returns the wait status, or -1 at the deadline.
  int Wait(std::chrono::seconds timeout) {
    pollfd p{pidfd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::chrono::milliseconds(timeout).count())) != 1) return -1;
    int status = 0;
    EXPECT_EQ(waitpid(pid_, &status, 0), pid_);
    reaped_ = true;
    return status;
  }
  void Signal(int sig) { kill(pid_, sig); }

 private:
  bool ReadSome(Clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) != 1) return false;
    char buf[4096];
    const ssize_t n = read(out_, buf, sizeof(buf));
    if (n <= 0) return false;
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1, pidfd_ = -1;
  bool reaped_ = false;
  std::string buffer_, all_;
};

bool ExitedWith(int status, int code) { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == code; }

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int v = 1; v <= 2; ++v) {
      model_[v] = dir_.path() + "/model" + std::to_string(v);
      testing::WriteSmallCheckpoint(model_[v], testing::SmallConfig(/*knum=*/64), DType::kF32, 30 + v);
      auto checkpoint = Checkpoint::Open(model_[v], {.check_shuffle_index = false});
      ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
      checkpoint_[v] = std::move(*checkpoint);
    }
    store_ = dir_.path() + "/store";
  }

  std::vector<std::string> ImportArgs(int v, int pause_after = -1) {
    std::vector<std::string> args = {ULTRAMEM_IMPORT_BIN, "--checkpoint=" + model_[v],
                                     "--store_dir=" + store_, "--version=v" + std::to_string(v),
                                     "--chunk_rows=256", "--progress=off"};
    if (pause_after >= 0) args.push_back("--debug_pause_after_chunks=" + std::to_string(pause_after));
    return args;
  }

  // Starts the server; fills grpc_address_. Empty optional on failure.
  std::unique_ptr<Child> StartServer() {
    auto server = std::make_unique<Child>(std::vector<std::string>{
        ULTRAMEM_SERVER_BIN, "--store_dir=" + store_,
        "--listen=127.0.0.1:0,unix:" + dir_.path() + "/ms.sock", "--metrics_listen=",
        "--hot_capacity_bytes=" + std::to_string(kShardBytes / 5), "--current_poll_ms=50"});
    const std::string listening = server->WaitForLine("LISTENING ", std::chrono::seconds(30));
    EXPECT_FALSE(listening.empty()) << server->ReadAll(std::chrono::seconds(1));
    // "LISTENING grpc=127.0.0.1:P,unix:/x metrics=0"
    std::vector<std::string> words = absl::StrSplit(listening, ' ');
    if (words.size() >= 2) {
      std::vector<std::string> addresses = absl::StrSplit(words[1].substr(5), ',');
      addresses_ = addresses;
    }
    EXPECT_FALSE(server->WaitForLine("SERVING ", std::chrono::seconds(30)).empty());
    return server;
  }

  std::unique_ptr<v1::MemoryService::Stub> Stub(int which = 0) {
    return v1::MemoryService::NewStub(
        grpc::CreateChannel(addresses_.at(which), grpc::InsecureChannelCredentials()));
  }

  // 20 fixed lookups; their values, all checked against checkpoint v.
  std::vector<float> Lookups(int v) {
    auto stub = Stub(1);
    std::mt19937_64 rng(77);
    std::vector<float> all;
    for (int i = 0; i < 20; ++i) {
      testing::Selections q = testing::RandomSelections(rng, i % 2, 2, 16, 0, 4096, 4, 2);
      v1::LookupResponse r;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      grpc::Status s = stub->Lookup(&context, testing::MakeRequest(q, 2), &r);
      EXPECT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(r.store_version(), "v" + std::to_string(v));
      const std::vector<float> got = testing::ResponseValues(r);
      EXPECT_LT(testing::MaxAbsDiff(got, testing::DirectPool(*checkpoint_[v], q, 0, 64)), 1e-4);
      all.insert(all.end(), got.begin(), got.end());
    }
    return all;
  }

  // Clients that look up until told to stop; counts failures.
  struct Load {
    std::atomic<bool> stop{false};
    std::atomic<int> ok{0}, failed{0}, refused{0};
    std::vector<std::thread> threads;
    void Start(ProcessTest* test, int clients, bool allow_refusal) {
      for (int c = 0; c < clients; ++c) {
        threads.emplace_back([this, test, c, allow_refusal] {
          auto stub = test->Stub(c % 2);
          std::mt19937_64 rng(c);
          while (!stop.load()) {
            testing::Selections q = testing::RandomSelections(rng, c % 2, 1, 32, 0, 4096, 4, 2);
            v1::LookupResponse r;
            grpc::ClientContext context;
            context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
            grpc::Status s = stub->Lookup(&context, testing::MakeRequest(q, 2), &r);
            const int v = r.store_version() == "v2" ? 2 : 1;
            if (s.ok() && testing::MaxAbsDiff(testing::ResponseValues(r),
                                              testing::DirectPool(*test->checkpoint_[v], q, 0, 64)) < 1e-4) {
              ++ok;
            } else if (allow_refusal && (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                                         s.error_code() == grpc::StatusCode::CANCELLED)) {
              ++refused;
              return;
            } else {
              ++failed;
            }
          }
        });
      }
    }
    void Join() {
      stop = true;
      for (std::thread& t : threads) t.join();
    }
  };

  static constexpr int64_t kShardBytes = 2 * 4096 * 64 * 4;
  testing::TempDir dir_;
  std::string model_[3], store_;
  std::unique_ptr<Checkpoint> checkpoint_[3];
  std::vector<std::string> addresses_;
};

TEST_F(ProcessTest, KillResumeServeDrainRestartAndSwitchVersions) {
  // 1. kill -9 in the middle of an import: nothing is published, the half-written version is
  //    refused, and a server refuses to start on the store.
  {
    Child import(ImportArgs(1, /*pause_after=*/5));
    ASSERT_EQ(import.WaitForLine("PAUSED", std::chrono::seconds(60)), "PAUSED")
        << import.ReadAll(std::chrono::seconds(1));
    import.Signal(SIGKILL);
    const int status = import.Wait(std::chrono::seconds(30));
    ASSERT_TRUE(status >= 0 && WIFSIGNALED(status));
  }
  EXPECT_EQ(ReadCurrent(store_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ValueStore::Open(store_, "v1", {}, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
  {
    Child server({ULTRAMEM_SERVER_BIN, "--store_dir=" + store_, "--listen=127.0.0.1:0",
                  "--metrics_listen="});
    const std::string output = server.ReadAll(std::chrono::seconds(30));
    EXPECT_TRUE(ExitedWith(server.Wait(std::chrono::seconds(30)), 1)) << output;
    EXPECT_NE(output.find("no CURRENT"), std::string::npos) << output;
  }
  // 2. The same command resumes: the 5 committed chunks are verified, not rewritten.
  {
    Child import(ImportArgs(1));
    const std::string output = import.ReadAll(std::chrono::seconds(60));
    ASSERT_TRUE(ExitedWith(import.Wait(std::chrono::seconds(30)), 0)) << output;
    EXPECT_NE(output.find("resuming"), std::string::npos) << output;
    EXPECT_NE(output.find("27 chunks written, 5 resumed"), std::string::npos) << output;
  }
  // 3. Serve; a killed import of v2 beside it changes nothing.
  std::vector<float> first;
  {
    auto server = StartServer();
    first = Lookups(1);
    {
      Child import(ImportArgs(2, /*pause_after=*/3));
      ASSERT_EQ(import.WaitForLine("PAUSED", std::chrono::seconds(60)), "PAUSED");
      import.Signal(SIGKILL);
      import.Wait(std::chrono::seconds(30));
    }
    EXPECT_EQ(Lookups(1), first);
    // 4. SIGTERM under load: in-flight lookups finish, then the process exits 0.
    Load load;
    load.Start(this, 4, /*allow_refusal=*/true);
    while (load.ok.load() < 20 && load.failed.load() == 0) {
      std::this_thread::yield();  // until the clients are demonstrably being served
    }
    server->Signal(SIGTERM);
    const int status = server->Wait(std::chrono::seconds(60));
    load.Join();
    EXPECT_TRUE(ExitedWith(status, 0)) << server->ReadAll(std::chrono::seconds(1));
    EXPECT_EQ(load.failed.load(), 0);
  }
  // 5. Restart without re-import: identical results.
  auto server = StartServer();
  EXPECT_EQ(Lookups(1), first);
  // 6. Finish v2 beside v1 and publish it under load: the server switches, no lookup fails.
  Load load;
  load.Start(this, 4, /*allow_refusal=*/false);
  {
    Child import(ImportArgs(2));
    const std::string output = import.ReadAll(std::chrono::seconds(60));
    ASSERT_TRUE(ExitedWith(import.Wait(std::chrono::seconds(30)), 0)) << output;
  }
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  std::string version;
  auto stub = Stub();
  while (version != "v2" && Clock::now() < deadline) {
    grpc::ClientContext context;
    v1::InfoResponse info;
    if (stub->Info(&context, v1::InfoRequest(), &info).ok()) version = info.store_version();
  }
  EXPECT_EQ(version, "v2");
  const int ok_at_switch = load.ok.load();
  while (load.ok.load() < ok_at_switch + 20 && load.failed.load() == 0) std::this_thread::yield();
  load.Join();
  EXPECT_EQ(load.failed.load(), 0);
  Lookups(2);
  server->Signal(SIGTERM);
  EXPECT_TRUE(ExitedWith(server->Wait(std::chrono::seconds(60)), 0));
}

}  // namespace
}  // namespace ultramem::memory
