// Implementation of compute_node/remote/remote_pooler.h.
//
// Threading: Start runs on the engine's thread and only sends; gRPC callback threads record
// replies and send retries; a timer thread sends hedges; Wait (engine thread) blocks until every
// attempt of the lookup has settled, then adds the replies into the caller's buffer. A lookup's
// state is shared by those three, guarded by its own mutex, and owned by a shared_ptr so that a
// late timer finds it gone rather than freed.
#include "compute_node/remote/remote_pooler.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/log.h"
#include "common/status.h"
#include "grpc_setup.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "ultramem/v1/memory.grpc.pb.h"

namespace ultramem {
namespace {

using Clock = std::chrono::steady_clock;

// gRPC takes deadlines on the system clock; the pooler keeps time on the steady one.
std::chrono::system_clock::time_point ToSystem(Clock::time_point t) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(t - Clock::now());
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Runs callbacks at given times on one thread.
class TimerThread {
 public:
  TimerThread() : thread_([this] { Loop(); }) {}
  ~TimerThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void Schedule(Clock::time_point when, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace(when, std::move(fn));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto first = queue_.begin();
      if (first->first > Clock::now()) {
        cv_.wait_until(lock, first->first);
        continue;
      }
      std::function<void()> fn = std::move(first->second);
      queue_.erase(first);
      lock.unlock();
      fn();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<Clock::time_point, std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

struct Replica {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::MemoryService::Stub> stub;
  std::atomic<int64_t> down_until_ns{0};
  std::atomic<bool> live{false};
};

struct ShardState {
  std::string name;
  std::vector<std::unique_ptr<Replica>> replicas;
  std::atomic<uint32_t> next{0};
  std::mutex mu;
  std::vector<double> recent_s;  // ring of recent successful attempt latencies
  size_t ring_pos = 0;
  prometheus::Histogram* latency = nullptr;
  prometheus::Counter* retries = nullptr;
  prometheus::Counter* hedges = nullptr;
  prometheus::Counter* failures = nullptr;

  void Record(double seconds) {
    std::lock_guard<std::mutex> lock(mu);
    if (recent_s.size() < 256) {
      recent_s.push_back(seconds);
    } else {
      recent_s[ring_pos++ % recent_s.size()] = seconds;
    }
  }
  double Percentile(double p) {
    std::lock_guard<std::mutex> lock(mu);
    if (recent_s.size() < 8) return -1.0;  // not enough history to judge "slow"
    std::vector<double> v = recent_s;
    size_t k = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
    std::nth_element(v.begin(), v.begin() + k, v.end());
    return v[k];
  }
};

struct Attempt {
  grpc::ClientContext ctx;
  v1::LookupResponse resp;
  int replica = 0;
  Clock::time_point sent;
};

struct LookupState;

struct ShardCall {
  const ResolvedBlock* block = nullptr;
  ShardState* shard = nullptr;
  v1::LookupRequest req;
  // Guarded by LookupState::mu.
  std::vector<std::unique_ptr<Attempt>> attempts;
  std::vector<bool> in_flight;  // per replica
  int outstanding = 0;
  bool done = false;
  bool settled_counted = false;
  bool hedged = false;
  Attempt* winner = nullptr;
  absl::Status status;
  std::string last_error;
};

struct LookupState : std::enable_shared_from_this<LookupState> {
  RemotePooler::Impl* impl = nullptr;
  PoolRequest req;
  Clock::time_point start, deadline;
  std::mutex mu;
  std::condition_variable cv;
  int unsettled = 0;
  Clock::time_point settled_at;  // when the last shard call settled
  std::vector<std::unique_ptr<ShardCall>> calls;
  bool waited = false;
};

}  // namespace

class RemotePooler::Impl {
 public:
  ModelConfig config;
  v1::ShardMap map;
  RemotePoolerOptions options;
  std::vector<ResolvedBlock> blocks;
  std::vector<std::unique_ptr<ShardState>> shards;
  std::unique_ptr<TimerThread> timer = std::make_unique<TimerThread>();
  int timeout_ms = 2000;
  double hedge_percentile = 0.95;
  int hedge_min_delay_us = 500;

  mutable std::mutex stats_mu;
  RemotePoolerStats stats;
  prometheus::Counter* lookup_seconds_total = nullptr;
  prometheus::Counter* wait_seconds_total = nullptr;
  prometheus::Histogram* wait_hist = nullptr;

  // Picks a replica for `call` not already in flight, preferring live ones; -1 when none.
  int PickReplica(ShardCall& call) {
    const int n = static_cast<int>(call.shard->replicas.size());
    const int64_t now = Clock::now().time_since_epoch().count();
    const uint32_t start = call.shard->next.fetch_add(1);
    int fallback = -1;
    for (int i = 0; i < n; ++i) {
      const int r = static_cast<int>((start + i) % n);
      if (call.in_flight[r]) continue;
      if (call.shard->replicas[r]->down_until_ns.load() <= now) return r;
      if (fallback < 0) fallback = r;
    }
    return fallback;
  }

  // Adds an attempt to `call` (state->mu held). Returns it, to be sent after unlocking.
  Attempt* NewAttempt(LookupState& state, ShardCall& call) {
    const int r = PickReplica(call);
    if (r < 0) return nullptr;
    auto a = std::make_unique<Attempt>();
    a->replica = r;
    a->ctx.set_deadline(ToSystem(state.deadline));
    call.in_flight[r] = true;
    call.outstanding++;
    call.attempts.push_back(std::move(a));
    std::lock_guard<std::mutex> lock(stats_mu);
    stats.attempts++;
    return call.attempts.back().get();
  }

  void Send(const std::shared_ptr<LookupState>& state, ShardCall* call, Attempt* a) {
    a->sent = Clock::now();
    Replica& rep = *call->shard->replicas[a->replica];
    // The state stays alive until every attempt has called back (Wait waits for that).
    LookupState* raw = state.get();
    rep.stub->async()->Lookup(&a->ctx, &call->req, &a->resp, [this, raw, call, a](grpc::Status s) {
      OnDone(raw, call, a, s);
    });
  }

  void OnDone(LookupState* state, ShardCall* call, Attempt* a, const grpc::Status& s) {
    const double latency = std::chrono::duration<double>(Clock::now() - a->sent).count();
    Replica& rep = *call->shard->replicas[a->replica];
    std::vector<Attempt*> to_send;
    std::vector<Attempt*> to_cancel;
    // Holds the state while losers are cancelled outside the lock: their callbacks may settle the
    // lookup meanwhile, and Wait must not free their contexts under TryCancel.
    std::shared_ptr<LookupState> keep;
    bool retry = false;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      call->outstanding--;
      call->in_flight[a->replica] = false;
      if (s.ok()) {
        rep.live = true;
        rep.down_until_ns = 0;
        call->shard->Record(latency);
        if (call->shard->latency) call->shard->latency->Observe(latency);
        if (!call->done) {
          call->done = true;
          call->winner = a;
          for (auto& other : call->attempts) {
            if (other.get() != a && call->in_flight[other->replica]) to_cancel.push_back(other.get());
          }
          if (!to_cancel.empty()) keep = state->shared_from_this();
        }
      } else if (!call->done) {
        const bool transport = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                               s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
        if (transport) {
          rep.live = false;
          rep.down_until_ns =
              (Clock::now() + std::chrono::milliseconds(options.replica_down_ms)).time_since_epoch().count();
        }
        call->last_error = absl::StrCat(rep.address, ": ", s.error_message(), " (code ",
                                        static_cast<int>(s.error_code()), ")");
        const bool caller_error = s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                                  s.error_code() == grpc::StatusCode::OUT_OF_RANGE ||
                                  s.error_code() == grpc::StatusCode::FAILED_PRECONDITION;
        const int max_attempts = 2 * static_cast<int>(call->shard->replicas.size());
        if (caller_error) {
          call->done = true;
          call->status = FromGrpc(s);
        } else if (Clock::now() < state->deadline &&
                   static_cast<int>(call->attempts.size()) < max_attempts) {
          if (Attempt* next = NewAttempt(*state, *call)) {
            to_send.push_back(next);
            retry = true;
          }
        }
        if (!call->done && call->outstanding == 0 && to_send.empty()) {
          call->done = true;
          call->status = absl::UnavailableError(absl::StrCat(
              "memory ", call->block->Describe(map), ": no replica answered within ", timeout_ms,
              " ms; last error: ", call->last_error));
          if (call->shard->failures) call->shard->failures->Increment();
          std::lock_guard<std::mutex> slock(stats_mu);
          stats.failures++;
        }
      }
      if (call->done && call->outstanding == 0 && to_send.empty() && !call->settled_counted) {
        call->settled_counted = true;
        if (--state->unsettled == 0) {
          state->settled_at = Clock::now();
          state->cv.notify_all();
        }
      }
    }
    if (retry) {
      if (call->shard->retries) call->shard->retries->Increment();
      std::lock_guard<std::mutex> slock(stats_mu);
      stats.retries++;
    }
    for (Attempt* c : to_cancel) c->ctx.TryCancel();
    // Retries reuse the state through the raw pointer: it is alive while this call is unsettled.
    for (Attempt* n : to_send) SendRaw(state, call, n);
  }

  void SendRaw(LookupState* state, ShardCall* call, Attempt* a) {
    a->sent = Clock::now();
    Replica& rep = *call->shard->replicas[a->replica];
    rep.stub->async()->Lookup(&a->ctx, &call->req, &a->resp, [this, state, call, a](grpc::Status s) {
      OnDone(state, call, a, s);
    });
  }

  void MaybeHedge(const std::shared_ptr<LookupState>& state, ShardCall* call) {
    Attempt* a = nullptr;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      if (call->done || call->hedged || call->outstanding != 1) return;
      call->hedged = true;
      a = NewAttempt(*state, *call);
      if (a == nullptr) return;
    }
    if (call->shard->hedges) call->shard->hedges->Increment();
    {
      std::lock_guard<std::mutex> slock(stats_mu);
      stats.hedges++;
    }
    SendRaw(state.get(), call, a);
  }
};

namespace {

class RemotePending : public PendingPool {
 public:
  RemotePending(RemotePooler::Impl* impl, std::shared_ptr<LookupState> state)
      : impl_(impl), state_(std::move(state)) {}
  ~RemotePending() override {
    if (!state_->waited) {
      CancelAll();
      WaitSettled();
    }
  }

  absl::Status Wait() override {
    const auto t0 = Clock::now();
    WaitSettled();
    const auto t1 = Clock::now();
    state_->waited = true;
    const double waited = std::chrono::duration<double>(t1 - t0).count();
    const auto end = state_->calls.empty() ? state_->start : state_->settled_at;
    const double lookup = std::chrono::duration<double>(end - state_->start).count();
    {
      std::lock_guard<std::mutex> lock(impl_->stats_mu);
      impl_->stats.lookups++;
      impl_->stats.wait_seconds += waited;
      impl_->stats.lookup_seconds += lookup;
    }
    if (impl_->wait_hist) impl_->wait_hist->Observe(waited);
    if (impl_->wait_seconds_total) impl_->wait_seconds_total->Increment(waited);
    if (impl_->lookup_seconds_total) impl_->lookup_seconds_total->Increment(lookup);
    return Gather();
  }

 private:
  // TryCancel runs outside the lock (it may complete the call inline); state_ keeps every
  // attempt alive meanwhile.
  void CancelAll() {
    std::vector<Attempt*> running;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      for (auto& c : state_->calls) {
        for (auto& a : c->attempts) {
          if (c->in_flight[a->replica]) running.push_back(a.get());
        }
      }
    }
    for (Attempt* a : running) a->ctx.TryCancel();
  }
  void WaitSettled() {
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->unsettled == 0; });
  }

  absl::Status Gather() {
    const PoolRequest& req = state_->req;
    const MemoryConfig& mc = *impl_->config.memory;
    const int E = mc.value_expand, Dv = mc.value_dim;
    for (auto& c : state_->calls) {
      if (!c->status.ok()) return c->status;
    }
    // Partial sums add in double and round once, like the pooling kernel, so that a row-split
    // result stays within an ulp of the in-process one.
    const size_t total = static_cast<size_t>(req.num_tokens) * E * Dv;
    std::vector<double> acc(total, 0.0);
    for (auto& c : state_->calls) {
      const v1::LookupResponse& r = c->winner->resp;
      const ResolvedBlock& b = *c->block;
      const int width = b.col_end - b.col_begin;
      const size_t elem = r.dtype() == v1::DTYPE_BF16 ? 2 : 4;
      if (static_cast<int>(r.num_tokens()) != req.num_tokens || static_cast<int>(r.expand()) != E ||
          static_cast<int>(r.col_begin()) != b.col_begin || static_cast<int>(r.col_end()) != b.col_end ||
          r.y().size() != static_cast<size_t>(req.num_tokens) * E * width * elem) {
        return absl::InternalError(absl::StrCat("memory ", b.Describe(impl_->map),
                                                ": reply shape disagrees with the request"));
      }
      const char* y = r.y().data();
      for (int t = 0; t < req.num_tokens; ++t) {
        for (int g = 0; g < E; ++g) {
          double* dst = acc.data() + (static_cast<size_t>(t) * E + g) * Dv + b.col_begin;
          const size_t base = (static_cast<size_t>(t) * E + g) * width;
          if (elem == 4) {
            for (int i = 0; i < width; ++i) {
              float v;
              std::memcpy(&v, y + (base + i) * 4, 4);
              dst[i] += v;
            }
          } else {
            for (int i = 0; i < width; ++i) {
              uint16_t v;
              std::memcpy(&v, y + (base + i) * 2, 2);
              dst[i] += Bf16ToF32(v);
            }
          }
        }
      }
    }
    for (size_t i = 0; i < total; ++i) req.out[i] = static_cast<float>(acc[i]);
    return absl::OkStatus();
  }

  RemotePooler::Impl* impl_;
  std::shared_ptr<LookupState> state_;
};

// Fills `call->req` with the selections of `req` whose rows fall in `b`.
void BuildRequest(const PoolRequest& req, const ResolvedBlock& b, int cores, bool bf16,
                  v1::LookupRequest* out) {
  const int64_t total = static_cast<int64_t>(req.num_tokens) * req.selections;
  std::vector<int32_t> rows, groups, offsets;
  std::vector<float> weights;
  rows.reserve(total);
  groups.reserve(total);
  weights.reserve(total * cores);
  offsets.reserve(req.num_tokens + 1);
  offsets.push_back(0);
  for (int t = 0; t < req.num_tokens; ++t) {
    for (int k = 0; k < req.selections; ++k) {
      const int64_t s = static_cast<int64_t>(t) * req.selections + k;
      const int64_t row = req.rows[s];
      if (row < b.row_begin || row >= b.row_end) continue;
      rows.push_back(static_cast<int32_t>(row));
      groups.push_back(req.groups[s]);
      weights.insert(weights.end(), req.scores + s * cores, req.scores + (s + 1) * cores);
    }
    offsets.push_back(static_cast<int32_t>(rows.size()));
  }
  out->set_layer(static_cast<uint32_t>(req.layer));
  out->set_num_tokens(static_cast<uint32_t>(req.num_tokens));
  out->set_num_selections(static_cast<uint32_t>(rows.size()));
  out->set_row_type(v1::INDEX_TYPE_INT32);
  out->set_rows(rows.data(), rows.size() * sizeof(int32_t));
  out->set_groups(groups.data(), groups.size() * sizeof(int32_t));
  out->set_num_cores(static_cast<uint32_t>(cores));
  out->set_weights(weights.data(), weights.size() * sizeof(float));
  if (static_cast<int64_t>(rows.size()) != total) {
    out->set_token_offsets(offsets.data(), offsets.size() * sizeof(int32_t));
  }
  out->set_out_dtype(bf16 ? v1::DTYPE_BF16 : v1::DTYPE_F32);
}

// Checks one replica's Info against the map and the model. OK when unreachable (marked down).
absl::Status VerifyReplica(RemotePooler::Impl& impl, int shard_index, Replica& rep) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(impl.options.info_timeout_ms));
  v1::InfoResponse info;
  grpc::Status s = rep.stub->Info(&ctx, v1::InfoRequest(), &info);
  const std::string who = absl::StrCat("memory server ", rep.address, " (shard '",
                                       impl.map.shards(shard_index).name(), "')");
  if (!s.ok()) {
    UM_LOG_WARNING(who, " did not answer Info (", s.error_message(), "); marked down");
    return absl::OkStatus();
  }
  const MemoryConfig& mc = *impl.config.memory;
  auto refuse = [&](const std::string& what) {
    return absl::FailedPreconditionError(absl::StrCat(who, " refused: ", what));
  };
  if (info.model_id() != impl.map.model_id()) {
    return refuse(absl::StrCat("it serves model '", info.model_id(), "', the shard map expects '",
                               impl.map.model_id(), "'"));
  }
  if (!impl.map.store_version().empty() && info.store_version() != impl.map.store_version()) {
    return refuse(absl::StrCat("it serves store version '", info.store_version(),
                               "', the shard map expects '", impl.map.store_version(), "'"));
  }
  if (info.num_rows() != mc.NumRows() || static_cast<int>(info.expand()) != mc.value_expand ||
      static_cast<int>(info.value_dim()) != mc.value_dim ||
      static_cast<int>(info.num_cores()) != mc.tucker_cores) {
    return refuse(absl::StrCat("its tables are N=", info.num_rows(), " E=", info.expand(), " Dv=",
                               info.value_dim(), " h=", info.num_cores(), ", the model has N=",
                               mc.NumRows(), " E=", mc.value_expand, " Dv=", mc.value_dim, " h=",
                               mc.tucker_cores));
  }
  for (const ResolvedBlock& b : impl.blocks) {
    if (b.shard != shard_index) continue;
    bool held = false;
    for (const v1::BlockInfo& bi : info.blocks()) {
      if (static_cast<int>(bi.layer()) == b.layer && bi.row_begin() <= b.row_begin &&
          bi.row_end() >= b.row_end && static_cast<int>(bi.col_begin()) == b.col_begin &&
          static_cast<int>(bi.col_end()) == b.col_end) {
        held = true;
      }
    }
    if (!held) return refuse(absl::StrCat("it does not hold ", b.Describe(impl.map)));
  }
  rep.live = true;
  return absl::OkStatus();
}

}  // namespace

RemotePooler::RemotePooler(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemotePooler::~RemotePooler() = default;

absl::StatusOr<std::unique_ptr<RemotePooler>> RemotePooler::Create(
    const ModelConfig& config, const v1::ShardMap& map, const RemotePoolerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->map = map;
  impl->options = options;
  UM_ASSIGN_OR_RETURN(impl->blocks, ResolveShardMap(map, config));
  if (map.lookup_timeout_ms() > 0) impl->timeout_ms = static_cast<int>(map.lookup_timeout_ms());
  if (map.hedge_percentile() > 0) impl->hedge_percentile = map.hedge_percentile();
  if (map.hedge_min_delay_us() > 0) impl->hedge_min_delay_us = static_cast<int>(map.hedge_min_delay_us());

  const auto creds = MakeChannelCredentials(options.root_certs_pem, options.client_cert_pem,
                                             options.client_key_pem);
  grpc::ChannelArguments args;
  // A restarted server is found again within a second, not after gRPC's default 2-minute backoff.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(256 << 20);

  prometheus::Family<prometheus::Histogram>* lat_family = nullptr;
  prometheus::Family<prometheus::Counter>*retry_family = nullptr, *hedge_family = nullptr,
  *fail_family = nullptr;
  if (options.registry != nullptr) {
    lat_family = &prometheus::BuildHistogram()
                      .Name("ultramem_memory_client_lookup_latency_seconds")
                      .Help("Latency of successful Lookup attempts to a memory shard")
                      .Register(*options.registry);
    retry_family = &prometheus::BuildCounter().Name("ultramem_memory_client_retries_total")
                        .Help("Lookup attempts sent after a failed one").Register(*options.registry);
    hedge_family = &prometheus::BuildCounter().Name("ultramem_memory_client_hedges_total")
                        .Help("Lookup attempts sent because the first was slow").Register(*options.registry);
    fail_family = &prometheus::BuildCounter().Name("ultramem_memory_client_failures_total")
                       .Help("Shard lookups that failed on every replica").Register(*options.registry);
    impl->lookup_seconds_total = &prometheus::BuildCounter()
                                      .Name("ultramem_memory_lookup_seconds_total")
                                      .Help("Time from issuing a memory-layer lookup to its last reply")
                                      .Register(*options.registry).Add({});
    impl->wait_seconds_total = &prometheus::BuildCounter()
                                    .Name("ultramem_memory_wait_seconds_total")
                                    .Help("Time the engine blocked waiting on memory lookups "
                                          "(the part the skipped blocks did not hide)")
                                    .Register(*options.registry).Add({});
    impl->wait_hist = &prometheus::BuildHistogram()
                           .Name("ultramem_memory_wait_seconds")
                           .Help("Time one engine step blocked on one memory-layer lookup")
                           .Register(*options.registry)
                           .Add({}, prometheus::Histogram::BucketBoundaries{
                                        1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 1});
  }
  const prometheus::Histogram::BucketBoundaries lat_buckets{5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3,
                                                            5e-3, 1e-2, 5e-2, 0.1, 0.5, 1};
  for (int s = 0; s < map.shards_size(); ++s) {
    auto shard = std::make_unique<ShardState>();
    shard->name = map.shards(s).name().empty() ? absl::StrCat("shard", s) : map.shards(s).name();
    for (const std::string& address : map.shards(s).replicas()) {
      auto rep = std::make_unique<Replica>();
      rep->address = address;
      rep->channel = grpc::CreateCustomChannel(address, creds, args);
      rep->stub = v1::MemoryService::NewStub(rep->channel);
      shard->replicas.push_back(std::move(rep));
    }
    if (lat_family) {
      shard->latency = &lat_family->Add({{"shard", shard->name}}, lat_buckets);
      shard->retries = &retry_family->Add({{"shard", shard->name}});
      shard->hedges = &hedge_family->Add({{"shard", shard->name}});
      shard->failures = &fail_family->Add({{"shard", shard->name}});
    }
    impl->shards.push_back(std::move(shard));
  }
  for (int s = 0; s < static_cast<int>(impl->shards.size()); ++s) {
    for (auto& rep : impl->shards[s]->replicas) UM_RETURN_IF_ERROR(VerifyReplica(*impl, s, *rep));
  }
  return std::unique_ptr<RemotePooler>(new RemotePooler(std::move(impl)));
}

std::unique_ptr<PendingPool> RemotePooler::Start(const PoolRequest& request) {
  Impl& impl = *impl_;
  auto state = std::make_shared<LookupState>();
  state->impl = &impl;
  state->req = request;
  state->start = Clock::now();
  state->deadline = state->start + std::chrono::milliseconds(impl.timeout_ms);
  const MemoryConfig& mc = *impl.config.memory;
  for (const ResolvedBlock& b : impl.blocks) {
    if (b.layer != request.layer) continue;
    auto call = std::make_unique<ShardCall>();
    call->block = &b;
    call->shard = impl.shards[b.shard].get();
    call->in_flight.assign(call->shard->replicas.size(), false);
    BuildRequest(request, b, mc.tucker_cores, impl.map.bf16_replies(), &call->req);
    // A block that no selection touches contributes zeros: no call.
    if (call->req.num_selections() == 0) continue;
    state->calls.push_back(std::move(call));
  }
  std::vector<std::pair<ShardCall*, Attempt*>> first;
  {
    std::lock_guard<std::mutex> lock(state->mu);
    state->unsettled = static_cast<int>(state->calls.size());
    for (auto& c : state->calls) first.emplace_back(c.get(), impl.NewAttempt(*state, *c));
  }
  for (auto& [call, attempt] : first) {
    impl.Send(state, call, attempt);
    if (impl.map.disable_hedging() || call->shard->replicas.size() < 2) continue;
    // Without enough history to know what "slow" is, hedge after a fixed 20 ms: a replica that
    // hangs must not cost the whole deadline.
    const double p = call->shard->Percentile(impl.hedge_percentile);
    const int64_t delay_us = p < 0 ? 20000 : static_cast<int64_t>(p * 1e6);
    const auto delay = std::chrono::microseconds(std::max<int64_t>(impl.hedge_min_delay_us, delay_us));
    std::weak_ptr<LookupState> weak = state;
    impl.timer->Schedule(state->start + delay, [&impl, weak, call = call] {
      if (auto s = weak.lock()) impl.MaybeHedge(s, call);
    });
  }
  return std::make_unique<RemotePending>(&impl, std::move(state));
}

void RemotePooler::Probe(int timeout_ms) {
  for (auto& shard : impl_->shards) {
    for (auto& rep : shard->replicas) {
      if (rep->live.load()) continue;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
      v1::PingResponse pong;
      if (rep->stub->Ping(&ctx, v1::PingRequest(), &pong).ok()) {
        rep->live = true;
        rep->down_until_ns = 0;
      }
    }
  }
}

bool RemotePooler::AllBlocksLive() const { return DeadBlocks().empty(); }

std::string RemotePooler::DeadBlocks() const {
  std::string dead;
  for (const ResolvedBlock& b : impl_->blocks) {
    bool live = false;
    for (auto& rep : impl_->shards[b.shard]->replicas) live = live || rep->live.load();
    if (!live) absl::StrAppend(&dead, dead.empty() ? "" : ", ", b.Describe(impl_->map));
  }
  return dead;
}

RemotePoolerStats RemotePooler::Stats() const {
  std::lock_guard<std::mutex> lock(impl_->stats_mu);
  return impl_->stats;
}

}  // namespace ultramem
