// Implementation of services/backend_pool.h.
#include "services/backend_pool.h"

#include <algorithm>

#include "absl/synchronization/blocking_counter.h"
#include "common/log.h"
#include "services/gateway_metrics.h"
#include "services/grpc_util.h"

namespace ultramem::services {

namespace v1 = ::ultramem::v1;

BackendPool::BackendPool(const BackendPoolOptions& options, GatewayMetrics* metrics,
                         std::function<void(int)> on_health_change)
    : options_(options), metrics_(metrics), on_health_change_(std::move(on_health_change)) {
  auto credentials = options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials();
  for (const std::string& address : options_.addresses) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options_.max_message_bytes);
    args.SetMaxSendMessageSize(options_.max_message_bytes);
    // Reconnect soon after a compute node restarts instead of backing off for up to two minutes.
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    auto backend = std::make_unique<Backend>();
    backend->address = address;
    backend->channel = grpc::CreateCustomChannel(address, credentials, args);
    backend->stub = v1::ChatService::NewStub(backend->channel);
    if (metrics_ != nullptr) backend->requests = &metrics_->BackendRequests(address);
    backends_.push_back(std::move(backend));
  }
  {
    absl::MutexLock lock(&mu_);
    state_.resize(backends_.size());
  }
  poller_ = std::thread([this] { PollLoop(); });
}

BackendPool::~BackendPool() { Stop(); }

void BackendPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (poller_.joinable() && poller_.get_id() != std::this_thread::get_id()) poller_.join();
}

void BackendPool::PollLoop() {
  for (;;) {
    PollOnce();
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                             absl::Milliseconds(options_.poll_interval_ms))) {
      return;
    }
  }
}

void BackendPool::PollOnce() {
  const size_t n = backends_.size();
  struct Result {
    absl::StatusOr<bool> serving = false;
    grpc::Status load_status;
    v1::LoadResponse load;
    grpc::ClientContext context;
    int in_flight = 0;
  };
  std::vector<Result> results(n);
  absl::BlockingCounter pending(static_cast<int>(2 * n));
  const absl::Duration timeout = absl::Milliseconds(options_.poll_timeout_ms);
  v1::LoadRequest request;
  for (size_t i = 0; i < n; ++i) {
    Backend& b = *backends_[i];
    Result& r = results[i];
    r.in_flight = b.in_flight.load();
    CheckHealthAsync(b.channel, "", timeout, [&r, &pending](absl::StatusOr<bool> serving) {
      r.serving = std::move(serving);
      pending.DecrementCount();
    });
    r.context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    b.stub->async()->Load(&r.context, &request, &r.load, [&r, &pending](grpc::Status status) {
      r.load_status = std::move(status);
      pending.DecrementCount();
    });
  }
  pending.Wait();  // every call has a deadline

  int healthy = 0;
  bool changed = false;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < n; ++i) {
      Result& r = results[i];
      State& s = state_[i];
      // A compute node is healthy when its health service says SERVING and it reports its load.
      // (A node without Load, e.g. an older one, still gets traffic at a neutral load.)
      std::string error;
      if (!r.serving.ok()) {
        error = "health: " + r.serving.status().ToString();
      } else if (!*r.serving) {
        error = "health: NOT_SERVING";
      } else if (!r.load_status.ok() && r.load_status.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
        error = "Load: " + r.load_status.error_message();
      }
      const bool healthy_now = error.empty();
      if (healthy_now != s.healthy || error != s.last_error) {
        if (healthy_now) {
          UM_LOG_INFO("backend ", backends_[i]->address, " is healthy");
        } else {
          UM_LOG_WARNING("backend ", backends_[i]->address, " is unhealthy: ", error);
        }
      }
      s.healthy = healthy_now;
      s.last_error = error;
      if (r.load_status.ok()) {
        const double capacity = std::max(1, r.load.max_running());
        s.load = (r.load.running() + r.load.waiting()) / capacity;
        s.per_call = 1.0 / capacity;
      } else {
        s.load = 0;
        s.per_call = 1.0;
      }
      s.in_flight_at_poll = r.in_flight;
      healthy += healthy_now ? 1 : 0;
    }
    changed = healthy != healthy_;
    healthy_ = healthy;
  }
  if (metrics_ != nullptr) metrics_->backends_healthy.Set(healthy);
  if (changed && on_health_change_) on_health_change_(healthy);
}

Backend* BackendPool::Pick(const std::vector<const Backend*>& exclude) {
  absl::MutexLock lock(&mu_);
  const size_t n = backends_.size();
  Backend* best = nullptr;
  double best_load = 0;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (next_ + k) % n;
    Backend* b = backends_[i].get();
    const State& s = state_[i];
    if (!s.healthy || std::find(exclude.begin(), exclude.end(), b) != exclude.end()) continue;
    const int started_since_poll = std::max(0, b->in_flight.load() - s.in_flight_at_poll);
    const double load = s.load + started_since_poll * s.per_call;
    if (best == nullptr || load < best_load) {
      best = b;
      best_load = load;
    }
  }
  next_ = (next_ + 1) % std::max<size_t>(n, 1);
  return best;
}

void BackendPool::Begin(Backend* backend) {
  backend->in_flight.fetch_add(1);
  if (backend->requests != nullptr) backend->requests->Increment();
}

void BackendPool::End(Backend* backend) { backend->in_flight.fetch_sub(1); }

int BackendPool::healthy_count() const {
  absl::MutexLock lock(&mu_);
  return healthy_;
}

bool BackendPool::WaitForHealthy(int count, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || healthy_ >= count;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  return !stopping_ && healthy_ >= count;
}

}  // namespace ultramem::services
