// The compute nodes the gateway forwards to: the configured addresses, each DNS name re-resolved
// periodically into one backend per address it stands for (a headless Service's pods); one channel
// per backend, health and load polled in a background thread, and the least-loaded pick.
// Thread safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "services/address_resolver.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem::services {

class GatewayMetrics;

// One compute node. Shared: the pool holds it while its address is configured or resolved, and
// each call holds it (the shared_ptr from Pick) until its End, so a backend whose address stops
// resolving leaves the pool at once but is destroyed (channel closed, metrics label dropped) only
// when its last call is done.
struct Backend {
  // What it is dialled as: a resolved "ip:port" / "[ip]:port", or a fixed address as configured.
  // Also its metrics label.
  std::string address;
  std::string target;  // the configured address it came from
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<ultramem::v1::ChatService::Stub> stub;
  // Gateway calls on this backend now (Chat attempts and ListModels); maintained by the callers
  // through BackendPool::Begin/End.
  std::atomic<int> in_flight{0};
  prometheus::Counter* requests = nullptr;  // ultramem_gateway_backend_requests_total{backend}
};

struct BackendPoolOptions {
  // "host:port" names (resolved, see resolver), literal "ip:port" and "unix:/path" (used as is).
  std::vector<std::string> addresses;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // default: plaintext
  int64_t poll_interval_ms = 200;
  int64_t poll_timeout_ms = 1000;
  int max_message_bytes = 16 << 20;
  // How often the names among `addresses` are resolved again. Shorter finds new pods sooner at the
  // cost of DNS queries (a cluster DNS may also cache answers for up to its TTL).
  int64_t resolve_interval_ms = 5000;
  // Resolves one name; empty: ResolveWithGetaddrinfo. Tests inject their own.
  AddressResolver resolver;
};

class BackendPool {
 public:
  // Resolves the names once (so the backends known at start are there on return), creates the
  // channels and starts polling, and re-resolving when there are names. `metrics` (may be null)
  // must outlive the pool and every Backend it handed out; `on_health_change` (may be empty) is
  // called one call at a time, from the thread that changed the count (the pool's threads, or
  // ResolveNow's caller, the constructor's included), with the number of healthy backends
  // whenever it changes.
  BackendPool(const BackendPoolOptions& options, GatewayMetrics* metrics,
              std::function<void(int)> on_health_change);
  // Stops (joins the threads).
  ~BackendPool();

  // The healthy backend with the lowest estimated load that is not in `exclude`, or null when
  // there is none. The estimate is the last polled (running + waiting) / max_running plus the
  // gateway's own calls started since that poll, so bursts between polls spread out; ties go
  // round robin. The caller keeps the pointer for as long as it uses the backend.
  std::shared_ptr<Backend> Pick(const std::vector<std::shared_ptr<Backend>>& exclude = {});
  // Account a call on `backend` (in-flight count and the per-backend counter) / its end.
  void Begin(Backend* backend);
  void End(Backend* backend);

  // Resolves every name now and applies the result: new addresses become backends (unhealthy
  // until their first poll), addresses no longer resolved leave the pool. A name whose resolution
  // fails keeps its last known addresses (logged once per distinct error). Synchronous; the
  // background re-resolution calls it too. Tests call it to apply a membership change at once.
  void ResolveNow();

  int healthy_count() const;
  // Backends known now (fixed and resolved).
  int size() const;
  // The backends known now, by address.
  std::vector<std::shared_ptr<Backend>> backends() const;
  // See Gateway::WaitForHealthyBackends; Stop() wakes waiters with false.
  bool WaitForHealthy(int count, absl::Duration timeout);
  // Stops polling and resolving; idempotent. Waits for a resolution in progress (as long as a DNS
  // query may take). Picks keep working on the last known state.
  void Stop();

 private:
  struct State {  // per backend, guarded by mu_
    bool healthy = false;
    double load = 0;        // (running + waiting) / max(max_running, 1) at the last poll
    double per_call = 1.0;  // what one more call adds to `load`
    int in_flight_at_poll = 0;
    std::string last_error;  // for logging changes only
  };
  struct Entry {
    std::shared_ptr<Backend> backend;
    State state;
  };
  // Per name, guarded by resolve_mu_.
  struct Resolution {
    std::vector<std::string> addresses;  // the last good answer
    std::string error;                   // the last error logged; empty after a success
  };

  std::shared_ptr<Backend> MakeBackend(const std::string& address, const std::string& target);
  void PollLoop();
  void PollOnce();
  void ResolveLoop();
  void UpdateHealthyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls on_health_change_ (and sets the gauge) if the count differs from the last one reported.
  void NotifyHealth();

  const BackendPoolOptions options_;
  const AddressResolver resolver_;
  GatewayMetrics* const metrics_;
  const std::function<void(int)> on_health_change_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;

  absl::Mutex resolve_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // one ResolveNow at a time
  std::map<std::string, Resolution> resolutions_ ABSL_GUARDED_BY(resolve_mu_);

  mutable absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);  // sorted by address
  int healthy_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // round-robin start for ties

  absl::Mutex notify_mu_;
  int notified_healthy_ ABSL_GUARDED_BY(notify_mu_) = 0;

  std::thread poller_;
  std::thread resolver_thread_;  // only when some address is a name
};

}  // namespace ultramem::services
