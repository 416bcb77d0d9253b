// The compute nodes the gateway forwards to: one channel each, their health and load polled in a
// background thread, and the least-loaded pick. Thread safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem::services {

class GatewayMetrics;

// One compute node. The channel and stub live as long as the pool.
struct Backend {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<ultramem::v1::ChatService::Stub> stub;
  // Gateway calls on this backend now (Chat attempts and ListModels); maintained by the callers
  // through BackendPool::Begin/End.
  std::atomic<int> in_flight{0};
  prometheus::Counter* requests = nullptr;  // ultramem_gateway_backend_requests_total{backend}
};

struct BackendPoolOptions {
  std::vector<std::string> addresses;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // default: plaintext
  int64_t poll_interval_ms = 200;
  int64_t poll_timeout_ms = 1000;
  int max_message_bytes = 16 << 20;
};

class BackendPool {
 public:
  // Creates the channels and starts polling. `metrics` (may be null) must outlive the pool;
  // `on_health_change` (may be empty) is called from the polling thread with the number of
  // healthy backends whenever it changes.
  BackendPool(const BackendPoolOptions& options, GatewayMetrics* metrics,
              std::function<void(int)> on_health_change);
  // Stops polling (joins the thread).
  ~BackendPool();

  // The healthy backend with the lowest estimated load that is not in `exclude`, or null when
  // there is none. The estimate is the last polled (running + waiting) / max_running plus the
  // gateway's own calls started since that poll, so bursts between polls spread out; ties go
  // round robin.
  Backend* Pick(const std::vector<const Backend*>& exclude = {});
  // Account a call on `backend` (in-flight count and the per-backend counter) / its end.
  void Begin(Backend* backend);
  void End(Backend* backend);

  int healthy_count() const;
  // See Gateway::WaitForHealthyBackends; Stop() wakes waiters with false.
  bool WaitForHealthy(int count, absl::Duration timeout);
  // Stops polling; idempotent. Picks keep working on the last known state.
  void Stop();

  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }

 private:
  struct State {  // per backend, guarded by mu_
    bool healthy = false;
    double load = 0;        // (running + waiting) / max(max_running, 1) at the last poll
    double per_call = 1.0;  // what one more call adds to `load`
    int in_flight_at_poll = 0;
    std::string last_error;  // for logging changes only
  };
  void PollLoop();
  void PollOnce();

  const BackendPoolOptions options_;
  GatewayMetrics* const metrics_;
  const std::function<void(int)> on_health_change_;
  std::vector<std::unique_ptr<Backend>> backends_;

  mutable absl::Mutex mu_;
  std::vector<State> state_ ABSL_GUARDED_BY(mu_);
  int healthy_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // round-robin start for ties
  std::thread poller_;
};

}  // namespace ultramem::services
