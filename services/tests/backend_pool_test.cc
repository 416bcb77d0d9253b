// BackendPool's membership by resolution (a fake resolver drives it deterministically through
// ResolveNow; one test resolves "localhost" for real), the default getaddrinfo resolver, and the
// gateway in front of a name whose addresses change under load. Every wait is on an event, with a
// deadline.
#include "services/backend_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/registry.h"
#include "services/address_resolver.h"
#include "services/gateway.h"
#include "services/gateway_metrics.h"
#include "services/tests/fake_backend.h"

namespace ultramem::services {
namespace {

namespace v1 = ::ultramem::v1;
using testing::FakeBackend;
using testing::FakeMode;

constexpr absl::Duration kWait = absl::Seconds(10);  // deadline for events that come at once
constexpr char kName[] = "compute.test:7100";

// A resolver whose answers the test sets; counts its calls. Shared with the pool's copy of it.
class FakeResolver {
 public:
  void Set(absl::StatusOr<std::vector<std::string>> answer) {
    absl::MutexLock lock(&state_->mu);
    state_->answer = std::move(answer);
  }
  int calls() const {
    absl::MutexLock lock(&state_->mu);
    return state_->calls;
  }
  bool WaitForCalls(int n, absl::Duration timeout) const {
    absl::MutexLock lock(&state_->mu);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
      return state_->calls >= n;
    };
    return state_->mu.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }
  AddressResolver resolver() const {
    return [state = state_](const std::string& target) -> absl::StatusOr<std::vector<std::string>> {
      absl::MutexLock lock(&state->mu);
      ++state->calls;
      if (target != kName) return absl::NotFoundError(target);
      return state->answer;
    };
  }

 private:
  struct State {
    mutable absl::Mutex mu;
    absl::StatusOr<std::vector<std::string>> answer ABSL_GUARDED_BY(mu) =
        absl::NotFoundError("not set");
    int calls ABSL_GUARDED_BY(mu) = 0;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

BackendPoolOptions PoolOptions(const FakeResolver& resolver) {
  BackendPoolOptions options;
  options.addresses = {kName};
  options.poll_interval_ms = 50;
  options.resolve_interval_ms = 3600 * 1000;  // the test calls ResolveNow
  options.resolver = resolver.resolver();
  return options;
}

std::set<std::string> Addresses(const BackendPool& pool) {
  std::set<std::string> result;
  for (const auto& b : pool.backends()) result.insert(b->address);
  return result;
}

// The backend labels of ultramem_gateway_backend_requests_total in `registry`.
std::set<std::string> BackendLabels(prometheus::Registry& registry) {
  std::set<std::string> labels;
  for (const auto& family : registry.Collect()) {
    if (family.name != "ultramem_gateway_backend_requests_total") continue;
    for (const auto& metric : family.metric) {
      for (const auto& label : metric.label) labels.insert(label.value);
    }
  }
  return labels;
}

v1::ChatRequest Hello() {
  v1::ChatRequest request;
  v1::ChatMessage* m = request.add_messages();
  m->set_role(v1::ROLE_USER);
  m->set_content("Hello?");
  return request;
}

TEST(AddressResolverTest, LiteralAddressesAndUrisPassThrough) {
  for (const char* fixed :
       {"127.0.0.1:7100", "[::1]:7100", "[fe80::1]:80", "unix:/tmp/compute.sock",
        "dns:///compute:7100", "ipv4:10.0.0.1:7100", "no-port", "::1"}) {
    EXPECT_TRUE(IsFixedAddress(fixed)) << fixed;
  }
  for (const char* name : {"localhost:7100", "ultramem-compute.ultramem.svc.cluster.local:7100"}) {
    EXPECT_FALSE(IsFixedAddress(name)) << name;
  }
}

TEST(AddressResolverTest, GetaddrinfoGivesIpPortWithIpv6Bracketed) {
  auto local = ResolveWithGetaddrinfo("localhost:7100");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_TRUE(std::count(local->begin(), local->end(), "127.0.0.1:7100") == 1)
      << absl::StrJoin(*local, ", ");
  for (const std::string& a : *local) EXPECT_TRUE(absl::EndsWith(a, ":7100")) << a;

  auto v6 = ResolveWithGetaddrinfo("[::1]:7100");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(*v6, std::vector<std::string>{"[::1]:7100"});

  EXPECT_EQ(ResolveWithGetaddrinfo("localhost").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveWithGetaddrinfo("localhost:http").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BackendPoolTest, FollowsTheResolvedSetAndRoutesToEveryMember) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  FakeResolver resolver;
  resolver.Set(std::vector<std::string>{a->address()});
  prometheus::Registry registry;
  GatewayMetrics metrics(registry);
  BackendPool pool(PoolOptions(resolver), &metrics, nullptr);
  EXPECT_EQ(Addresses(pool), std::set<std::string>{a->address()});
  ASSERT_TRUE(pool.WaitForHealthy(1, kWait));

  // Scaled up: B appears, is polled and gets its share under load.
  resolver.Set(std::vector<std::string>{a->address(), b->address()});
  pool.ResolveNow();
  EXPECT_EQ(Addresses(pool), (std::set<std::string>{a->address(), b->address()}));
  EXPECT_EQ(metrics.backends_known.Value(), 2);
  ASSERT_TRUE(pool.WaitForHealthy(2, kWait));
  std::vector<std::shared_ptr<Backend>> busy;
  std::map<std::string, int> picks;
  for (int i = 0; i < 6; ++i) {
    busy.push_back(pool.Pick());
    ASSERT_NE(busy.back(), nullptr);
    pool.Begin(busy.back().get());
    ++picks[busy.back()->address];
  }
  EXPECT_GE(picks[a->address()], 2);
  EXPECT_GE(picks[b->address()], 2);
  for (const auto& backend : busy) pool.End(backend.get());
  EXPECT_EQ(BackendLabels(registry), (std::set<std::string>{a->address(), b->address()}));

  // Scaled down: A leaves at once; nothing picks it any more; its metrics label goes with it once
  // the last holder lets go.
  std::weak_ptr<Backend> backend_a;
  for (const auto& backend : pool.backends()) {
    if (backend->address == a->address()) backend_a = backend;
  }
  resolver.Set(std::vector<std::string>{b->address()});
  pool.ResolveNow();
  EXPECT_EQ(Addresses(pool), std::set<std::string>{b->address()});
  EXPECT_EQ(pool.healthy_count(), 1);
  EXPECT_EQ(metrics.backends_known.Value(), 1);
  for (int i = 0; i < 4; ++i) {
    auto picked = pool.Pick();
    ASSERT_NE(picked, nullptr);
    EXPECT_EQ(picked->address, b->address());
  }
  busy.clear();
  // A poll in progress may still hold A; the round after it has let go.
  const int polls = b->load_calls();
  ASSERT_TRUE(b->WaitForLoadCalls(polls + 2, kWait));
  EXPECT_TRUE(backend_a.expired());
  EXPECT_EQ(BackendLabels(registry), std::set<std::string>{b->address()});
}

TEST(BackendPoolTest, AResolutionFailureKeepsTheKnownSet) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  FakeResolver resolver;  // nothing resolves at first: the pool starts empty, not failed
  BackendPool pool(PoolOptions(resolver), nullptr, nullptr);
  EXPECT_EQ(pool.size(), 0);
  EXPECT_EQ(pool.Pick(), nullptr);

  resolver.Set(std::vector<std::string>{a->address(), b->address()});
  pool.ResolveNow();
  ASSERT_TRUE(pool.WaitForHealthy(2, kWait));
  for (absl::StatusOr<std::vector<std::string>> failure :
       {absl::StatusOr<std::vector<std::string>>(absl::UnavailableError("DNS down")),
        absl::StatusOr<std::vector<std::string>>(absl::NotFoundError("NXDOMAIN")),
        absl::StatusOr<std::vector<std::string>>(std::vector<std::string>{})}) {
    resolver.Set(failure);
    pool.ResolveNow();
    pool.ResolveNow();  // the same error again: logged once, still kept
    EXPECT_EQ(Addresses(pool), (std::set<std::string>{a->address(), b->address()}));
    EXPECT_EQ(pool.healthy_count(), 2);
  }
}

TEST(BackendPoolTest, ACallOnARemovedBackendCompletesThenTheBackendIsDestroyed) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  a->SetMode(FakeMode::kHoldAfterFirstChunk);
  FakeResolver resolver;
  resolver.Set(std::vector<std::string>{a->address()});
  BackendPool pool(PoolOptions(resolver), nullptr, nullptr);
  ASSERT_TRUE(pool.WaitForHealthy(1, kWait));

  std::shared_ptr<Backend> picked = pool.Pick();
  ASSERT_NE(picked, nullptr);
  pool.Begin(picked.get());
  const std::weak_ptr<Backend> watch = picked;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
  auto reader = picked->stub->Chat(&context, Hello());
  v1::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));  // the call is on A, held there

  resolver.Set(std::vector<std::string>{b->address()});
  pool.ResolveNow();
  EXPECT_EQ(Addresses(pool), std::set<std::string>{b->address()});
  EXPECT_FALSE(watch.expired());  // the call still holds A

  a->Release();
  std::string text = chunk.text();
  while (reader->Read(&chunk)) text += chunk.text();
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(text, a->expected_text());
  pool.End(picked.get());
  picked.reset();
  // A poll in progress may still hold A; the round after it has let go.
  const int polls = b->load_calls();
  ASSERT_TRUE(b->WaitForLoadCalls(polls + 2, kWait));
  EXPECT_TRUE(watch.expired());
}

TEST(BackendPoolTest, LocalhostResolvesToTheBackendListeningThere) {
  auto backend = FakeBackend::Start("A");  // on 127.0.0.1 only
  const std::string port = backend->address().substr(backend->address().rfind(':') + 1);
  BackendPoolOptions options;
  options.addresses = {"localhost:" + port};
  options.poll_interval_ms = 50;
  BackendPool pool(options, nullptr, nullptr);
  const std::set<std::string> known = Addresses(pool);
  EXPECT_EQ(known.count("127.0.0.1:" + port), 1) << absl::StrJoin(known, ", ");
  ASSERT_TRUE(pool.WaitForHealthy(1, kWait));
  // Only what listens counts: "[::1]:port", when localhost has it too, stays unhealthy.
  EXPECT_EQ(pool.healthy_count(), 1);
  auto picked = pool.Pick();
  ASSERT_NE(picked, nullptr);
  EXPECT_EQ(picked->address, "127.0.0.1:" + port);
  EXPECT_EQ(picked->target, "localhost:" + port);
}

struct ChatOutcome {
  grpc::Status status;
  std::string text;
};

TEST(GatewayDnsTest, SpreadsOverResolvedPodsAndFinishesStreamsOnRemovedOnes) {
  auto a = FakeBackend::Start("A");
  auto b = FakeBackend::Start("B");
  a->SetMode(FakeMode::kHoldAfterFirstChunk);
  b->SetMode(FakeMode::kHoldAfterFirstChunk);
  FakeResolver resolver;
  resolver.Set(std::vector<std::string>{a->address()});
  GatewayOptions options;
  options.backends = {kName};
  options.listen_address = "127.0.0.1:0";
  options.metrics_address = "";
  options.poll_interval_ms = 50;
  options.resolve_interval_ms = 20;
  options.drain_timeout_ms = 2000;
  options.resolver = resolver.resolver();
  auto started = Gateway::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<Gateway> gateway = std::move(*started);
  ASSERT_TRUE(gateway->WaitForHealthyBackends(1, kWait));
  EXPECT_EQ(gateway->known_backends(), 1);

  resolver.Set(std::vector<std::string>{a->address(), b->address()});
  ASSERT_TRUE(gateway->WaitForHealthyBackends(2, kWait));
  EXPECT_EQ(gateway->known_backends(), 2);

  // Four held streams: least-loaded routing puts some on each pod.
  auto stub = v1::ChatService::NewStub(
      grpc::CreateChannel(gateway->address(), grpc::InsecureChannelCredentials()));
  std::vector<ChatOutcome> outcomes(4);
  std::vector<std::thread> clients;
  for (ChatOutcome& outcome : outcomes) {
    clients.emplace_back([&stub, &outcome] {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
      auto reader = stub->Chat(&context, Hello());
      v1::ChatChunk chunk;
      while (reader->Read(&chunk)) outcome.text += chunk.text();
      outcome.status = reader->Finish();
    });
  }
  ASSERT_TRUE(a->WaitForChatCalls(1, kWait));
  ASSERT_TRUE(b->WaitForChatCalls(1, kWait));
  // Wait until all four are on a backend: the counts only grow.
  const absl::Time give_up = absl::Now() + kWait;
  while (a->chat_calls() + b->chat_calls() < 4 && absl::Now() < give_up) {
    a->WaitForChatCalls(a->chat_calls() + 1, absl::Milliseconds(10));
  }
  ASSERT_EQ(a->chat_calls() + b->chat_calls(), 4);
  const int on_a = a->chat_calls();

  // A's pod goes away from DNS while its streams are in flight: new calls go to B only.
  resolver.Set(std::vector<std::string>{b->address()});
  const int calls = resolver.calls();
  ASSERT_TRUE(resolver.WaitForCalls(calls + 2, kWait));  // a full round after the change
  EXPECT_EQ(gateway->known_backends(), 1);
  b->SetMode(FakeMode::kStream);
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
    auto reader = stub->Chat(&context, Hello());
    v1::ChatChunk chunk;
    std::string text;
    while (reader->Read(&chunk)) text += chunk.text();
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(text, b->expected_text());
  }
  EXPECT_EQ(a->chat_calls(), on_a);

  // The streams held on the removed pod finish normally.
  a->Release();
  b->Release();
  for (std::thread& t : clients) t.join();
  for (const ChatOutcome& outcome : outcomes) {
    EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
    EXPECT_TRUE(outcome.text == a->expected_text() || outcome.text == b->expected_text())
        << outcome.text;
  }
  gateway->Shutdown();
}

}  // namespace
}  // namespace ultramem::services
