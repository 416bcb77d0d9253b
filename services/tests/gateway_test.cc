// The gateway in-process against fake compute nodes (fake_backend.h): auth, input checks,
// least-loaded routing, cancellation and deadlines across the hop, failover, concurrency, TLS,
// health, drain and the metric names. Every wait is on an event, with a deadline.
#include "services/gateway.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/file_util.h"
#include "services/grpc_util.h"
#include "services/tests/fake_backend.h"

namespace ultramem::services {
namespace {

namespace v1 = ::ultramem::v1;
using testing::FakeBackend;
using testing::FakeMode;

constexpr absl::Duration kWait = absl::Seconds(10);  // deadline for events that come at once

GatewayOptions TestOptions(const std::vector<const FakeBackend*>& backends) {
  GatewayOptions options;
  for (const FakeBackend* b : backends) options.backends.push_back(b->address());
  options.listen_address = "127.0.0.1:0";
  options.metrics_address = "";  // the exposer takes ~2 s to stop; only the metrics test uses it
  options.poll_interval_ms = 50;
  options.drain_timeout_ms = 2000;
  return options;
}

v1::ChatRequest Hello() {
  v1::ChatRequest request;
  v1::ChatMessage* m = request.add_messages();
  m->set_role(v1::ROLE_USER);
  m->set_content("Hello?");
  return request;
}

struct ChatResult {
  grpc::Status status;
  std::string text;
  int chunks = 0;
  bool got_usage = false;
};

ChatResult RunChat(v1::ChatService::Stub& stub, const v1::ChatRequest& request,
                   const std::string& token = "", absl::Duration timeout = kWait) {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  ChatResult result;
  auto reader = stub.Chat(&context, request);
  v1::ChatChunk chunk;
  while (reader->Read(&chunk)) {
    ++result.chunks;
    result.text += chunk.text();
    result.got_usage |= chunk.has_usage();
  }
  result.status = reader->Finish();
  return result;
}

class GatewayTest : public ::testing::Test {
 protected:
  // Starts the gateway and waits for `healthy` backends.
  void StartGateway(const GatewayOptions& options, int healthy,
                    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr) {
    auto gateway = Gateway::Start(options);
    ASSERT_TRUE(gateway.ok()) << gateway.status();
    gateway_ = std::move(*gateway);
    if (healthy > 0) {
      ASSERT_TRUE(gateway_->WaitForHealthyBackends(healthy, kWait));
    }
    channel_ = grpc::CreateChannel(gateway_->address(),
                                   credentials ? credentials : grpc::InsecureChannelCredentials());
    stub_ = v1::ChatService::NewStub(channel_);
  }

  std::unique_ptr<Gateway> gateway_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ChatService::Stub> stub_;
};

TEST_F(GatewayTest, StreamsTheBackendsChunksThrough) {
  auto backend = FakeBackend::Start("A");
  StartGateway(TestOptions({backend.get()}), 1);
  ChatResult r = RunChat(*stub_, Hello());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, backend->expected_text());
  EXPECT_EQ(r.chunks, 4);  // three texts and the final chunk
  EXPECT_TRUE(r.got_usage);

  grpc::ClientContext context;
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "fake-A");
}

TEST_F(GatewayTest, BearerTokenRefusedWhenMissingOrWrongAcceptedWhenRight) {
  auto backend = FakeBackend::Start("A");
  GatewayOptions options = TestOptions({backend.get()});
  options.auth_token = "s3cret-token";
  StartGateway(options, 1);

  ChatResult missing = RunChat(*stub_, Hello());
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(missing.status.error_message().find("authorization"), std::string::npos);
  ChatResult wrong = RunChat(*stub_, Hello(), "s3cret-tokem");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(backend->chat_calls(), 0);

  ChatResult right = RunChat(*stub_, Hello(), "s3cret-token");
  ASSERT_TRUE(right.status.ok()) << right.status.error_message();
  EXPECT_EQ(right.text, backend->expected_text());

  grpc::ClientContext context;
  v1::ListModelsResponse models;
  EXPECT_EQ(stub_->ListModels(&context, v1::ListModelsRequest(), &models).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Health needs no token.
  auto serving = CheckHealth(channel_, "", kWait);
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
}

TEST_F(GatewayTest, EveryBadInputIsInvalidArgumentWithAMessage) {
  auto backend = FakeBackend::Start("A");
  StartGateway(TestOptions({backend.get()}), 1);
  const std::vector<std::pair<std::string, std::function<void(v1::ChatRequest&)>>> cases = {
      {"messages", [](v1::ChatRequest& r) { r.clear_messages(); }},
      {"role", [](v1::ChatRequest& r) { r.mutable_messages(0)->set_role(v1::ROLE_UNSPECIFIED); }},
      {"role", [](v1::ChatRequest& r) { r.mutable_messages(0)->set_role(static_cast<v1::Role>(9)); }},
      {"content", [](v1::ChatRequest& r) { r.mutable_messages(0)->clear_content(); }},
      {"max_tokens", [](v1::ChatRequest& r) { r.mutable_sampling()->set_max_tokens(-1); }},
      {"temperature", [](v1::ChatRequest& r) { r.mutable_sampling()->set_temperature(-0.5f); }},
      {"temperature",
       [](v1::ChatRequest& r) { r.mutable_sampling()->set_temperature(std::nanf("")); }},
      {"temperature",
       [](v1::ChatRequest& r) {
         r.mutable_sampling()->set_temperature(std::numeric_limits<float>::infinity());
       }},
      {"top_p", [](v1::ChatRequest& r) { r.mutable_sampling()->set_top_p(1.5f); }},
      {"top_p", [](v1::ChatRequest& r) { r.mutable_sampling()->set_top_p(-0.1f); }},
      {"top_k", [](v1::ChatRequest& r) { r.mutable_sampling()->set_top_k(-3); }},
  };
  for (const auto& [field, mutate] : cases) {
    v1::ChatRequest request = Hello();
    mutate(request);
    ChatResult r = RunChat(*stub_, request);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_NE(r.status.error_message().find(field), std::string::npos)
        << field << ": " << r.status.error_message();
  }
  EXPECT_EQ(backend->chat_calls(), 0);
  // An empty earlier message is fine (only the last one must say something).
  v1::ChatRequest ok = Hello();
  ok.mutable_messages()->Add()->CopyFrom(ok.messages(0));
  ok.mutable_messages(0)->set_role(v1::ROLE_SYSTEM);
  ok.mutable_messages(0)->clear_content();
  EXPECT_TRUE(RunChat(*stub_, ok).status.ok());
}

TEST_F(GatewayTest, LeastLoadedRoutingPicksTheLighterBackend) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  a->SetLoad(8, 4, 10);
  b->SetLoad(1, 0, 10);
  StartGateway(TestOptions({a.get(), b.get()}), 2);
  for (int i = 0; i < 3; ++i) {
    ChatResult r = RunChat(*stub_, Hello());
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.text, b->expected_text());
  }
  EXPECT_EQ(a->chat_calls(), 0);
  EXPECT_EQ(b->chat_calls(), 3);

  // The load turns around; after the next full poll the gateway follows it.
  a->SetLoad(0, 0, 10);
  b->SetLoad(9, 9, 10);
  const int a_polls = a->load_calls(), b_polls = b->load_calls();
  ASSERT_TRUE(a->WaitForLoadCalls(a_polls + 2, kWait));
  ASSERT_TRUE(b->WaitForLoadCalls(b_polls + 2, kWait));
  ChatResult r = RunChat(*stub_, Hello());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, a->expected_text());
}

TEST_F(GatewayTest, ClientCancelReachesTheBackendPromptly) {
  auto backend = FakeBackend::Start("A");
  backend->SetMode(FakeMode::kChunkThenBlock);
  StartGateway(TestOptions({backend.get()}), 1);
  grpc::ClientContext context;
  auto reader = stub_->Chat(&context, Hello());
  v1::ChatChunk chunk;
  // The first chunk arrives while the backend is still working: chunks stream through.
  ASSERT_TRUE(reader->Read(&chunk));
  EXPECT_EQ(chunk.text(), "A:");
  const absl::Time cancelled_at = absl::Now();
  context.TryCancel();
  ASSERT_TRUE(backend->WaitForCancellations(1, kWait));
  EXPECT_LT(absl::Now() - cancelled_at, absl::Seconds(1));
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(GatewayTest, DeadlineIsPropagatedToTheBackend) {
  auto backend = FakeBackend::Start("A");
  StartGateway(TestOptions({backend.get()}), 1);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  ChatResult r = RunChat(*stub_, Hello(), "", absl::Seconds(20));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(backend->last_deadline().has_value());
  // grpc-timeout travels rounded up to a few significant digits on each hop.
  EXPECT_LE(*backend->last_deadline(), deadline + absl::Seconds(1));
  EXPECT_GT(*backend->last_deadline(), deadline - absl::Seconds(5));

  // A deadline that passes while the backend works ends both calls.
  backend->SetMode(FakeMode::kBlock);
  ChatResult late = RunChat(*stub_, Hello(), "", absl::Milliseconds(300));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(backend->WaitForCancellations(1, kWait));
}

TEST_F(GatewayTest, FailsOverOnUnavailableBeforeTheFirstChunkOnly) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  a->SetLoad(0, 0, 10);  // the gateway tries A first
  b->SetLoad(5, 0, 10);
  a->SetMode(FakeMode::kFailUnavailable);
  StartGateway(TestOptions({a.get(), b.get()}), 2);
  ChatResult r = RunChat(*stub_, Hello());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, b->expected_text());
  EXPECT_EQ(a->chat_calls(), 1);
  EXPECT_EQ(b->chat_calls(), 1);

  // After a chunk has gone out, UNAVAILABLE reaches the client as it is: no duplicated output.
  a->SetMode(FakeMode::kChunkThenUnavailable);
  r = RunChat(*stub_, Hello());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.status.error_message(), "A broke mid-stream");
  EXPECT_EQ(r.text, "A:");
  EXPECT_EQ(b->chat_calls(), 1);

  // Other errors are the client's to see, code and message unchanged, without a retry.
  a->SetMode(FakeMode::kFailWith,
             grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full (256 waiting)"));
  r = RunChat(*stub_, Hello());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(r.status.error_message(), "queue full (256 waiting)");
  EXPECT_EQ(b->chat_calls(), 1);

  // Every backend down: the last one's status.
  b->SetMode(FakeMode::kFailUnavailable);
  a->SetMode(FakeMode::kFailUnavailable);
  r = RunChat(*stub_, Hello());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.status.error_message(), "B is down");
}

TEST_F(GatewayTest, ThirtyTwoConcurrentStreamsComplete) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  for (FakeBackend* f : {a.get(), b.get()}) {
    f->SetChunks({"one ", "two ", "three ", "four ", "five"}, absl::Milliseconds(10));
  }
  StartGateway(TestOptions({a.get(), b.get()}), 2);
  constexpr int kStreams = 32;
  std::vector<ChatResult> results(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { results[i] = RunChat(*stub_, Hello()); });
  }
  for (std::thread& t : threads) t.join();
  for (const ChatResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_TRUE(r.text == a->expected_text() || r.text == b->expected_text()) << r.text;
    EXPECT_EQ(r.chunks, 6);
  }
  EXPECT_EQ(a->chat_calls() + b->chat_calls(), kStreams);
  // In-flight counting spreads a burst that arrives between two load polls.
  EXPECT_GT(a->chat_calls(), 0);
  EXPECT_GT(b->chat_calls(), 0);
}

// A self-signed certificate for localhost/127.0.0.1, made with openssl in a fresh directory.
struct TestCert {
  std::string cert_pem, key_pem;
};
// `names`: the certificate's subjectAltName.
TestCert MakeSelfSignedCert(const std::string& names = "DNS:localhost,IP:127.0.0.1") {
  char dir_template[] = "/tmp/ultramem_gateway_tls_XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::string cert = dir + "/cert.pem", key = dir + "/key.pem";
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=", names, " -keyout ", key, " -out ", cert,
      " >/dev/null 2>&1");
  TestCert result;
  if (std::system(command.c_str()) == 0) {
    result.cert_pem = ReadFileOrEmpty(cert).value_or("");
    result.key_pem = ReadFileOrEmpty(key).value_or("");
  }
  std::system(absl::StrCat("rm -rf ", dir).c_str());
  return result;
}

TEST_F(GatewayTest, TlsRoundTripWithMutualTlsToTheBackend) {
  const TestCert tls = MakeSelfSignedCert();
  ASSERT_FALSE(tls.cert_pem.empty()) << "openssl could not make a certificate";
  // The backend only talks to clients whose certificate it trusts.
  auto backend = FakeBackend::Start("A", {tls.cert_pem, tls.key_pem, tls.cert_pem});
  GatewayOptions options = TestOptions({backend.get()});
  options.tls_cert_pem = tls.cert_pem;
  options.tls_key_pem = tls.key_pem;
  options.backend_tls_ca_pem = tls.cert_pem;
  options.backend_tls_cert_pem = tls.cert_pem;
  options.backend_tls_key_pem = tls.key_pem;
  StartGateway(options, 1, MakeChannelCredentials(tls.cert_pem));
  ChatResult r = RunChat(*stub_, Hello());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, backend->expected_text());

  // Plaintext clients get no answer from a TLS port.
  auto plain = v1::ChatService::NewStub(
      grpc::CreateChannel(gateway_->address(), grpc::InsecureChannelCredentials()));
  EXPECT_FALSE(RunChat(*plain, Hello(), "", absl::Seconds(3)).status.ok());
}

TEST_F(GatewayTest, TlsToAResolvedNameChecksTheCertificateAgainstTheName) {
  // The certificate names only "localhost": the gateway dials 127.0.0.1 (what localhost resolves
  // to) but must check the certificate against the name it was given.
  const TestCert tls = MakeSelfSignedCert("DNS:localhost");
  ASSERT_FALSE(tls.cert_pem.empty()) << "openssl could not make a certificate";
  auto backend = FakeBackend::Start("A", {tls.cert_pem, tls.key_pem, ""});
  GatewayOptions options = TestOptions({});
  options.backends = {"localhost:" + backend->address().substr(backend->address().rfind(':') + 1)};
  options.backend_tls_ca_pem = tls.cert_pem;
  StartGateway(options, 1);
  ChatResult r = RunChat(*stub_, Hello());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, backend->expected_text());
}

// A local port nobody listens on.
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

TEST_F(GatewayTest, HealthIsNotServingWithoutAHealthyBackend) {
  GatewayOptions options = TestOptions({});
  options.backends = {absl::StrCat("127.0.0.1:", ClosedPort())};
  StartGateway(options, 0);
  auto serving = CheckHealth(channel_, "", kWait);
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_FALSE(*serving);
  EXPECT_FALSE(gateway_->WaitForHealthyBackends(1, absl::Milliseconds(300)));
  ChatResult r = RunChat(*stub_, Hello());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(r.status.error_message().find("no healthy compute node"), std::string::npos);

  auto backend = FakeBackend::Start("A");
  GatewayOptions live = TestOptions({backend.get()});
  auto gateway = Gateway::Start(live);
  ASSERT_TRUE(gateway.ok());
  ASSERT_TRUE((*gateway)->WaitForHealthyBackends(1, kWait));
  auto channel = grpc::CreateChannel((*gateway)->address(), grpc::InsecureChannelCredentials());
  serving = CheckHealth(channel, "", kWait);
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
}

TEST_F(GatewayTest, ShutdownDrainsInFlightStreams) {
  auto backend = FakeBackend::Start("A");
  backend->SetChunks({"a", "b", "c", "d", "e"}, absl::Milliseconds(60));
  StartGateway(TestOptions({backend.get()}), 1);
  ChatResult result;
  std::thread client([&] { result = RunChat(*stub_, Hello()); });
  ASSERT_TRUE(backend->WaitForChatCalls(1, kWait));
  gateway_->Shutdown();  // returns once the stream has finished
  client.join();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.text, backend->expected_text());
}

TEST_F(GatewayTest, ShutdownCancelsStreamsThatOutliveTheDrainTimeout) {
  auto backend = FakeBackend::Start("A");
  backend->SetMode(FakeMode::kBlock);
  GatewayOptions options = TestOptions({backend.get()});
  options.drain_timeout_ms = 200;
  StartGateway(options, 1);
  ChatResult result;
  std::thread client([&] { result = RunChat(*stub_, Hello()); });
  ASSERT_TRUE(backend->WaitForChatCalls(1, kWait));
  gateway_->Shutdown();
  client.join();
  EXPECT_FALSE(result.status.ok());
  EXPECT_TRUE(backend->WaitForCancellations(1, kWait));
}

// GET http://127.0.0.1:port/metrics (plain HTTP/1.0), the body.
std::string FetchMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

TEST_F(GatewayTest, ExportsTheMetricsOfTheProcessContract) {
  auto backend = FakeBackend::Start("A");
  GatewayOptions options = TestOptions({backend.get()});
  options.metrics_address = "127.0.0.1:0";
  StartGateway(options, 1);
  ASSERT_TRUE(RunChat(*stub_, Hello()).status.ok());
  v1::ChatRequest bad = Hello();
  bad.clear_messages();
  ASSERT_EQ(RunChat(*stub_, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_GT(gateway_->metrics_port(), 0);
  const std::string text = FetchMetrics(gateway_->metrics_port());
  for (const char* name :
       {"ultramem_gateway_requests_total{code=\"OK\"} 1",
        "ultramem_gateway_requests_total{code=\"INVALID_ARGUMENT\"} 1",
        "ultramem_gateway_requests_in_flight 0", "ultramem_gateway_request_latency_seconds_count 1",
        "ultramem_gateway_time_to_first_token_seconds_count 1",
        "ultramem_gateway_backends_healthy 1", "ultramem_gateway_backends_known 1"}) {
    EXPECT_NE(text.find(name), std::string::npos) << name << "\n" << text;
  }
  EXPECT_NE(text.find(absl::StrCat("ultramem_gateway_backend_requests_total{backend=\"",
                                   backend->address(), "\"} 1")),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace ultramem::services
