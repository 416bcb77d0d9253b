// Implementation of services/backend_pool.h: membership (ResolveNow), polling and the pick.
#include "services/backend_pool.h"

#include <algorithm>
#include <set>
#include <unordered_map>

#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "common/log.h"
#include "services/gateway_metrics.h"
#include "services/grpc_util.h"

namespace ultramem::services {

namespace v1 = ::ultramem::v1;

BackendPool::BackendPool(const BackendPoolOptions& options, GatewayMetrics* metrics,
                         std::function<void(int)> on_health_change)
    : options_(options),
      resolver_(options.resolver ? options.resolver : AddressResolver(ResolveWithGetaddrinfo)),
      metrics_(metrics),
      on_health_change_(std::move(on_health_change)),
      credentials_(options.credentials ? options.credentials : grpc::InsecureChannelCredentials()) {
  ResolveNow();
  poller_ = std::thread([this] { PollLoop(); });
  const bool has_names = std::any_of(options_.addresses.begin(), options_.addresses.end(),
                                     [](const std::string& a) { return !IsFixedAddress(a); });
  if (has_names) resolver_thread_ = std::thread([this] { ResolveLoop(); });
}

BackendPool::~BackendPool() { Stop(); }

void BackendPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread* t : {&poller_, &resolver_thread_}) {
    if (t->joinable() && t->get_id() != std::this_thread::get_id()) t->join();
  }
}

std::shared_ptr<Backend> BackendPool::MakeBackend(const std::string& address,
                                                  const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  // Reconnect soon after a compute node restarts instead of backing off for up to two minutes.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  if (address != target) {
    // Dialled by IP but still the named service: TLS checks the certificate against the name, and
    // the compute node sees the name as the authority.
    args.SetSslTargetNameOverride(target.substr(0, target.rfind(':')));
    args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, target);
  }
  GatewayMetrics* metrics = metrics_;
  // The deleter runs when the last holder (the pool or a call) lets go.
  std::shared_ptr<Backend> backend(new Backend, [metrics](Backend* b) {
    if (metrics != nullptr) metrics->ReleaseBackendRequests(b->address);
    delete b;
  });
  backend->address = address;
  backend->target = target;
  backend->channel = grpc::CreateCustomChannel(address, credentials_, args);
  backend->stub = v1::ChatService::NewStub(backend->channel);
  if (metrics_ != nullptr) backend->requests = &metrics_->AcquireBackendRequests(address);
  return backend;
}

void BackendPool::ResolveNow() {
  absl::MutexLock resolve_lock(&resolve_mu_);
  std::map<std::string, std::string> wanted;  // address -> the target it came from
  for (const std::string& target : options_.addresses) {
    if (IsFixedAddress(target)) {
      wanted.emplace(target, target);
      continue;
    }
    absl::StatusOr<std::vector<std::string>> addresses = resolver_(target);
    if (addresses.ok() && addresses->empty()) {
      addresses = absl::NotFoundError("the resolver returned no address");
    }
    Resolution& r = resolutions_[target];
    if (!addresses.ok()) {
      const std::string error = addresses.status().ToString();
      if (error != r.error) {
        UM_LOG_WARNING("cannot resolve ", target, " (", error, "); keeping its ",
                       r.addresses.size(), " known address(es)");
        r.error = error;
      }
    } else {
      std::vector<std::string> sorted = *std::move(addresses);
      std::sort(sorted.begin(), sorted.end());
      sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
      if (sorted != r.addresses || !r.error.empty()) {
        UM_LOG_INFO(target, " resolves to ", absl::StrJoin(sorted, ", "));
      }
      r.addresses = std::move(sorted);
      r.error.clear();
    }
    for (const std::string& address : r.addresses) wanted.emplace(address, target);
  }

  // Membership changes only here (under resolve_mu_), so the diff stays valid while the new
  // channels are made outside mu_.
  std::vector<std::pair<std::string, std::string>> to_add;
  {
    absl::MutexLock lock(&mu_);
    std::set<std::string> known;
    for (const Entry& e : entries_) known.insert(e.backend->address);
    for (const auto& [address, target] : wanted) {
      if (known.count(address) == 0) to_add.emplace_back(address, target);
    }
  }
  std::vector<Entry> added;
  for (const auto& [address, target] : to_add) {
    added.push_back(Entry{MakeBackend(address, target), State{}});
    if (address != target) UM_LOG_INFO("backend ", address, " (", target, ") added");
  }
  std::vector<std::shared_ptr<Backend>> removed;  // released after unlocking
  int known = 0;
  {
    absl::MutexLock lock(&mu_);
    auto gone = [&wanted](const Entry& e) { return wanted.count(e.backend->address) == 0; };
    for (const Entry& e : entries_) {
      if (gone(e)) removed.push_back(e.backend);
    }
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(), gone), entries_.end());
    for (Entry& e : added) entries_.push_back(std::move(e));
    std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return a.backend->address < b.backend->address;
    });
    UpdateHealthyLocked();
    known = static_cast<int>(entries_.size());
  }
  for (const auto& b : removed) {
    // The pool's reference is dropped below; calls still on it hold theirs until they end.
    UM_LOG_INFO("backend ", b->address, " (", b->target, ") removed; ", b->in_flight.load(),
                " call(s) still on it finish there");
  }
  removed.clear();
  if (metrics_ != nullptr) metrics_->backends_known.Set(known);
  NotifyHealth();
}

void BackendPool::ResolveLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                               absl::Milliseconds(options_.resolve_interval_ms))) {
        return;
      }
    }
    ResolveNow();
  }
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
  // Polls the backends known now; one added meanwhile waits for the next round, one removed
  // meanwhile is kept alive by this snapshot and its result dropped.
  const std::vector<std::shared_ptr<Backend>> backends = this->backends();
  const size_t n = backends.size();
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
    Backend& b = *backends[i];
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

  {
    absl::MutexLock lock(&mu_);
    std::unordered_map<const Backend*, Entry*> by_backend;
    for (Entry& e : entries_) by_backend[e.backend.get()] = &e;
    for (size_t i = 0; i < n; ++i) {
      auto it = by_backend.find(backends[i].get());
      if (it == by_backend.end()) continue;  // removed while polling
      Result& r = results[i];
      State& s = it->second->state;
      // A compute node is healthy when its health service says SERVING and it reports its load.
      // (A node without Load, e.g. an older one, still gets traffic at a neutral load.)
      std::string error;
      if (!r.serving.ok()) {
        error = "health: " + r.serving.status().ToString();
      } else if (!*r.serving) {
        error = "health: NOT_SERVING";
      } else if (!r.load_status.ok() &&
                 r.load_status.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
        error = "Load: " + r.load_status.error_message();
      }
      const bool healthy_now = error.empty();
      if (healthy_now != s.healthy || error != s.last_error) {
        if (healthy_now) {
          UM_LOG_INFO("backend ", backends[i]->address, " is healthy");
        } else {
          UM_LOG_WARNING("backend ", backends[i]->address, " is unhealthy: ", error);
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
    }
    UpdateHealthyLocked();
  }
  NotifyHealth();
}

void BackendPool::UpdateHealthyLocked() {
  healthy_ = static_cast<int>(std::count_if(entries_.begin(), entries_.end(),
                                            [](const Entry& e) { return e.state.healthy; }));
}

void BackendPool::NotifyHealth() {
  absl::MutexLock lock(&notify_mu_);
  const int healthy = healthy_count();  // the latest, whichever thread changed it
  if (healthy == notified_healthy_) return;
  notified_healthy_ = healthy;
  if (metrics_ != nullptr) metrics_->backends_healthy.Set(healthy);
  if (on_health_change_) on_health_change_(healthy);
}

std::shared_ptr<Backend> BackendPool::Pick(const std::vector<std::shared_ptr<Backend>>& exclude) {
  absl::MutexLock lock(&mu_);
  const size_t n = entries_.size();
  const Entry* best = nullptr;
  double best_load = 0;
  for (size_t k = 0; k < n; ++k) {
    const Entry& e = entries_[(next_ + k) % n];
    if (!e.state.healthy || std::find(exclude.begin(), exclude.end(), e.backend) != exclude.end()) {
      continue;
    }
    const int started_since_poll =
        std::max(0, e.backend->in_flight.load() - e.state.in_flight_at_poll);
    const double load = e.state.load + started_since_poll * e.state.per_call;
    if (best == nullptr || load < best_load) {
      best = &e;
      best_load = load;
    }
  }
  next_ = (next_ + 1) % std::max<size_t>(n, 1);
  return best != nullptr ? best->backend : nullptr;
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

int BackendPool::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(entries_.size());
}

std::vector<std::shared_ptr<Backend>> BackendPool::backends() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Backend>> result;
  result.reserve(entries_.size());
  for (const Entry& e : entries_) result.push_back(e.backend);
  return result;
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
