// The two programs as users run them: ultramem-gateway (flags as PROCESSES.md spells them, the
// LISTENING/SERVING lines, exit 0 on SIGTERM) in front of a fake compute node named by
// "localhost:PORT", and ultramem-chat one-shot and interactive (conversation kept), with the token
// from the environment.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/tests/fake_backend.h"

namespace ultramem::services {
namespace {

namespace v1 = ::ultramem::v1;
using testing::FakeBackend;

// A child process whose stdout we read line by line with a deadline.
class Child {
 public:
  explicit Child(std::vector<std::string> argv) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(out[1]);
    fd_ = out[0];
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }

  // The next line that starts with `prefix`, or "" when the deadline passes or output ends.
  std::string WaitForLine(const std::string& prefix, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      for (size_t eol; (eol = buffer_.find('\n')) != std::string::npos;) {
        std::string line = buffer_.substr(0, eol);
        buffer_.erase(0, eol + 1);
        if (line.rfind(prefix, 0) == 0) return line;
      }
      const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (wait_ms <= 0) return "";
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, wait_ms) <= 0) return "";
      char chunk[1024];
      const ssize_t n = read(fd_, chunk, sizeof(chunk));
      if (n <= 0) return "";
      buffer_.append(chunk, n);
    }
  }

  // Sends `signal` and returns the exit status (-1 when it did not exit normally in time).
  int StopWith(int signal, absl::Duration timeout) {
    kill(pid_, signal);
    const absl::Time deadline = absl::Now() + timeout;
    int status = 0;
    while (absl::Now() < deadline) {
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      // No event to wait on for a child's exit short of SIGCHLD plumbing; poll briefly.
      absl::SleepFor(absl::Milliseconds(10));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buffer_;
};

// Runs a shell command; its stdout and exit code.
std::pair<std::string, int> RunShell(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {"", -1};
  char chunk[1024];
  for (size_t n; (n = fread(chunk, 1, sizeof(chunk), pipe)) > 0;) out.append(chunk, n);
  const int status = pclose(pipe);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

TEST(ProcessTest, GatewayAndChatClientEndToEndWithAFakeComputeNode) {
  auto backend = FakeBackend::Start("A");
  ASSERT_NE(backend, nullptr);
  char token_template[] = "/tmp/ultramem_gateway_token_XXXXXX";
  const int token_fd = mkstemp(token_template);
  ASSERT_GE(token_fd, 0);
  ASSERT_EQ(write(token_fd, "tok-42\n", 7), 7);
  close(token_fd);
  const std::string token_file = token_template;

  // By name, as in Kubernetes: "localhost" resolves to the fake's 127.0.0.1 (and maybe ::1,
  // where nothing listens: known but not healthy).
  const std::string by_name =
      "localhost:" + backend->address().substr(backend->address().rfind(':') + 1);
  Child gateway({ULTRAMEM_GATEWAY_BIN, "--backends", by_name, "--listen", "127.0.0.1:0",
                 "--metrics-listen", "127.0.0.1:0", "--auth-token-file", token_file,
                 "--poll-interval-ms", "50", "--resolve-interval-ms", "200"});
  const std::string listening = gateway.WaitForLine("LISTENING ", absl::Seconds(20));
  ASSERT_FALSE(listening.empty());
  const size_t begin = listening.find("grpc=") + 5;
  const std::string address = listening.substr(begin, listening.find(' ', begin) - begin);
  EXPECT_NE(listening.find(" metrics="), std::string::npos);
  const std::string serving = gateway.WaitForLine("SERVING", absl::Seconds(20));
  ASSERT_FALSE(serving.empty());
  EXPECT_TRUE(absl::StartsWith(serving, "SERVING backends=1/")) << serving;

  const std::string chat = absl::StrCat(ULTRAMEM_CHAT_BIN, " --endpoint ", address);
  // No token: refused, non-zero exit, the status on stderr.
  auto [refused, refused_code] = RunShell(chat + " 'Hello?' 2>&1");
  EXPECT_NE(refused_code, 0);
  EXPECT_NE(refused.find("UNAUTHENTICATED"), std::string::npos) << refused;

  auto [reply, code] = RunShell(absl::StrCat("ULTRAMEM_AUTH_TOKEN=tok-42 ", chat,
                                        " --max-tokens 16 --temperature 0.5 --top-p 0.9 "
                                        "--top-k 5 --seed 7 --stop END 'Hello?' 2>/dev/null"));
  EXPECT_EQ(code, 0);
  EXPECT_EQ(reply, backend->expected_text() + "\n");
  const v1::ChatRequest sent = backend->last_request();
  EXPECT_EQ(sent.sampling().max_tokens(), 16);
  EXPECT_EQ(sent.sampling().top_k(), 5);
  EXPECT_EQ(sent.sampling().seed(), 7u);
  ASSERT_EQ(sent.sampling().stop_size(), 1);
  EXPECT_EQ(sent.sampling().stop(0), "END");

  // Interactive: two turns from stdin, the second carrying the first exchange.
  auto [dialog, dialog_code] = RunShell(absl::StrCat("printf 'first\\nsecond\\n' | ", chat,
                                                " --token tok-42 --system 'Be brief.' 2>/dev/null"));
  EXPECT_EQ(dialog_code, 0);
  EXPECT_EQ(dialog, backend->expected_text() + "\n" + backend->expected_text() + "\n");
  const v1::ChatRequest second = backend->last_request();
  ASSERT_EQ(second.messages_size(), 4);
  EXPECT_EQ(second.messages(0).role(), v1::ROLE_SYSTEM);
  EXPECT_EQ(second.messages(1).content(), "first");
  EXPECT_EQ(second.messages(2).role(), v1::ROLE_ASSISTANT);
  EXPECT_EQ(second.messages(2).content(), backend->expected_text());
  EXPECT_EQ(second.messages(3).content(), "second");

  EXPECT_EQ(gateway.StopWith(SIGTERM, absl::Seconds(20)), 0);
  unlink(token_file.c_str());
}

}  // namespace
}  // namespace ultramem::services
