// Implementation of memory_server/memory_server.h: the callback-API service, the server's life
// cycle (start, load, reload, drain) and the one conversion from absl::Status to grpc::Status.
#include "memory_server/memory_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/dtype.h"
#include "common/log.h"
#include "common/status.h"
#include "memory_server/metrics.h"
#include "memory_server/worker_pool.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "proto/grpc_setup.h"
#include "ultramem/v1/memory.grpc.pb.h"

namespace ultramem::memory {
namespace {

namespace v1 = ::ultramem::v1;
using Clock = std::chrono::steady_clock;

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

v1::DType ToProto(StoreDType dtype) {
  return dtype == StoreDType::kF32 ? v1::DTYPE_F32 : v1::DTYPE_BF16;
}

bool SameShape(const StoreManifest& a, const StoreManifest& b) {
  if (a.num_rows != b.num_rows || a.expand != b.expand || a.value_dim != b.value_dim ||
      a.cores != b.cores || a.num_memory_layers != b.num_memory_layers ||
      a.blocks.size() != b.blocks.size()) {
    return false;
  }
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    const BlockSpec &x = a.blocks[i], &y = b.blocks[i];
    if (x.layer != y.layer || x.row_begin != y.row_begin || x.row_end != y.row_end ||
        x.col_begin != y.col_begin || x.col_end != y.col_end) {
      return false;
    }
  }
  return true;
}

// One Lookup between decode and reply; shared with the cold thread when it has misses.
struct LookupCall {
  std::shared_ptr<const ValueStore> store;
  DecodedLookup decoded;
  LookupScratch scratch;
  Clock::time_point start;
};

}  // namespace

class MemoryServer::Impl final : public v1::MemoryService::CallbackService {
 public:
  explicit Impl(const MemoryServerOptions& options) : options_(options) {}
  ~Impl() override { Shutdown(); }

  absl::Status Start();
  absl::Status Load();
  absl::Status Reload();
  void Shutdown();

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const v1::LookupRequest* request,
                                   v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* Info(grpc::CallbackServerContext* context,
                                 const v1::InfoRequest* request,
                                 v1::InfoResponse* response) override;
  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* context,
                                 const v1::PingRequest* request,
                                 v1::PingResponse* response) override;

  std::shared_ptr<const ValueStore> store() const {
    absl::MutexLock lock(&mu_);
    return store_;
  }

  const std::vector<std::string>& addresses() const { return addresses_; }
  int metrics_port() const { return metrics_port_; }

 private:
  void Finish(grpc::ServerUnaryReactor* reactor, const absl::Status& status, Clock::time_point start,
              bool counted_in_flight);
  absl::Status Complete(LookupCall& call, v1::LookupResponse* response);
  void Serve(std::shared_ptr<const ValueStore> store);
  void PollCurrent();

  const MemoryServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MemoryMetrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<WorkerPool> cold_pool_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> addresses_;
  int metrics_port_ = 0;
  std::atomic<int> in_flight_{0};

  mutable absl::Mutex mu_;
  std::shared_ptr<const ValueStore> store_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex reload_mu_;  // one Reload at a time
  std::thread poller_;
  std::once_flag shutdown_once_;
};

absl::Status MemoryServer::Impl::Start() {
  if (options_.store_dir.empty()) return absl::InvalidArgumentError("no store directory given");
  if (options_.listen_addresses.empty()) return absl::InvalidArgumentError("no listening address");
  if (options_.max_in_flight <= 0 || options_.cold_threads <= 0 || options_.store.gpu_streams <= 0) {
    return absl::InvalidArgumentError("max_in_flight, cold_threads and gpu_streams must be positive");
  }
  // A device that is not there fails here, before any port is bound.
  UM_ASSIGN_OR_RETURN(const DeviceSpec device, ParseDevice(options_.store.device));
  UM_RETURN_IF_ERROR(CheckDeviceAvailable(device));
  EnableStandardGrpcServices();
  registry_ = std::make_shared<prometheus::Registry>();
  metrics_ = std::make_unique<MemoryMetrics>(*registry_);
  if (!options_.metrics_address.empty()) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(options_.metrics_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", options_.metrics_address, ": ", e.what()));
    }
    exposer_->RegisterCollectable(registry_);
    const auto ports = exposer_->GetListeningPorts();
    metrics_port_ = ports.empty() ? 0 : ports[0];
  }
  cold_pool_ = std::make_unique<WorkerPool>(options_.cold_threads);

  const auto creds = MakeServerCredentials(options_.tls_cert_pem, options_.tls_key_pem,
                                           options_.tls_client_ca_pem);
  grpc::ServerBuilder builder;
  std::vector<int> ports(options_.listen_addresses.size(), 0);
  for (size_t i = 0; i < ports.size(); ++i) {
    builder.AddListeningPort(options_.listen_addresses[i], creds, &ports[i]);
  }
  builder.RegisterService(this);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ",
                                               absl::StrJoin(options_.listen_addresses, ", ")));
  }
  for (size_t i = 0; i < ports.size(); ++i) {
    const std::string& address = options_.listen_addresses[i];
    if (ports[i] == 0) {
      server_->Shutdown();
      return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
    }
    if (address.rfind("unix:", 0) == 0) {
      addresses_.push_back(address);
    } else {
      addresses_.push_back(absl::StrCat(address.substr(0, address.rfind(':')), ":", ports[i]));
    }
  }
  server_->GetHealthCheckService()->SetServingStatus(false);
  UM_LOG_INFO("memory server listening on ", absl::StrJoin(addresses_, ", "),
              metrics_port_ ? absl::StrCat(", metrics on port ", metrics_port_) : "");
  return absl::OkStatus();
}

void MemoryServer::Impl::Serve(std::shared_ptr<const ValueStore> store) {
  const std::string version = store->manifest().version;
  std::string previous;
  {
    absl::MutexLock lock(&mu_);
    if (store_) previous = store_->manifest().version;
    store_ = std::move(store);
  }
  if (!previous.empty()) metrics_->store_info.Add({{"version", previous}}).Set(0);
  metrics_->store_info.Add({{"version", version}}).Set(1);
  const HotTierInfo hot = this->store()->hot_info();
  metrics_->hot_bytes.Set(static_cast<double>(hot.bytes_used));
  metrics_->hot_capacity_bytes.Set(static_cast<double>(hot.capacity_bytes));
}

absl::Status MemoryServer::Impl::Load() {
  UM_ASSIGN_OR_RETURN(std::unique_ptr<ValueStore> store,
                      ValueStore::Open(options_.store_dir, options_.version, options_.store,
                                       metrics_.get()));
  Serve(std::move(store));
  server_->GetHealthCheckService()->SetServingStatus(true);
  if (options_.version.empty() && options_.current_poll_ms > 0 && !poller_.joinable()) {
    poller_ = std::thread([this] { PollCurrent(); });
  }
  return absl::OkStatus();
}

absl::Status MemoryServer::Impl::Reload() {
  absl::MutexLock reload_lock(&reload_mu_);
  if (!options_.version.empty()) return absl::OkStatus();
  std::shared_ptr<const ValueStore> current = store();
  if (current == nullptr) return absl::FailedPreconditionError("no store loaded yet");
  UM_ASSIGN_OR_RETURN(std::string version, ReadCurrent(options_.store_dir));
  if (version == current->manifest().version) return absl::OkStatus();
  UM_LOG_INFO("CURRENT names version ", version, "; opening it beside ",
              current->manifest().version);
  UM_ASSIGN_OR_RETURN(std::unique_ptr<ValueStore> next,
                      ValueStore::Open(options_.store_dir, version, options_.store, metrics_.get()));
  if (!SameShape(current->manifest(), next->manifest())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store version ", version, " holds other blocks or dimensions than version ",
        current->manifest().version, "; not switching (start a server for it instead)"));
  }
  Serve(std::move(next));
  UM_LOG_INFO("now serving store version ", version);
  return absl::OkStatus();
}

void MemoryServer::Impl::PollCurrent() {
  std::string last_error;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                               absl::Milliseconds(options_.current_poll_ms))) {
        return;
      }
    }
    absl::Status status = Reload();
    if (!status.ok() && std::string(status.message()) != last_error) {
      UM_LOG_WARNING("store reload: ", status.ToString());
    }
    last_error = status.ok() ? "" : std::string(status.message());
  }
}

void MemoryServer::Impl::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (poller_.joinable()) poller_.join();
    if (server_ != nullptr) {
      server_->GetHealthCheckService()->SetServingStatus(false);
      UM_LOG_INFO("draining: ", in_flight_.load(), " lookups in flight");
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(options_.drain_timeout_ms));
      server_->Wait();
    }
    cold_pool_.reset();
    exposer_.reset();  // civetweb takes up to ~2 s to stop its threads
    UM_LOG_INFO("memory server stopped");
  });
}

void MemoryServer::Impl::Finish(grpc::ServerUnaryReactor* reactor, const absl::Status& status,
                                Clock::time_point start, bool counted_in_flight) {
  if (!status.ok()) metrics_->CountError(status.code());
  metrics_->lookup_latency.Observe(std::chrono::duration<double>(Clock::now() - start).count());
  if (counted_in_flight) {
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    metrics_->requests_in_flight.Decrement();
  }
  reactor->Finish(ToGrpc(status));
}

absl::Status MemoryServer::Impl::Complete(LookupCall& call, v1::LookupResponse* response) {
  const ValueStore& store = *call.store;
  const StoreManifest& m = store.manifest();
  const BlockSpec& block = m.blocks[call.decoded.block_index];
  const size_t count = static_cast<size_t>(call.decoded.num_tokens) * m.expand * block.width();
  std::string* y = response->mutable_y();
  LookupStats stats;
  absl::Status status;
  if (!call.decoded.out_bf16) {
    y->resize(count * sizeof(float));
    status = store.Complete(call.decoded, &call.scratch, reinterpret_cast<float*>(y->data()), &stats);
  } else {
    thread_local std::vector<float> f32;
    f32.resize(count);
    status = store.Complete(call.decoded, &call.scratch, f32.data(), &stats);
    y->resize(count * sizeof(uint16_t));
    for (size_t i = 0; i < count; ++i) {
      const uint16_t v = F32ToBf16(f32[i]);
      std::memcpy(y->data() + 2 * i, &v, 2);
    }
  }
  if (!status.ok()) return status;
  metrics_->CountRows(stats.hot_rows, stats.cold_rows);
  if (stats.cold_rows > 0) metrics_->hot_bytes.Set(static_cast<double>(store.hot_info().bytes_used));
  response->set_num_tokens(static_cast<uint32_t>(call.decoded.num_tokens));
  response->set_expand(static_cast<uint32_t>(m.expand));
  response->set_col_begin(static_cast<uint32_t>(block.col_begin));
  response->set_col_end(static_cast<uint32_t>(block.col_end));
  response->set_dtype(call.decoded.out_bf16 ? v1::DTYPE_BF16 : v1::DTYPE_F32);
  response->set_hot_rows(static_cast<uint32_t>(stats.hot_rows));
  response->set_cold_rows(static_cast<uint32_t>(stats.cold_rows));
  response->set_store_version(m.version);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* MemoryServer::Impl::Lookup(grpc::CallbackServerContext* context,
                                                     const v1::LookupRequest* request,
                                                     v1::LookupResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Clock::time_point start = Clock::now();
  std::shared_ptr<const ValueStore> store = this->store();
  if (store == nullptr) {
    Finish(reactor, absl::UnavailableError("the memory server is still loading its store"), start,
           false);
    return reactor;
  }
  metrics_->requests_in_flight.Increment();
  if (in_flight_.fetch_add(1, std::memory_order_relaxed) >= options_.max_in_flight) {
    Finish(reactor, absl::ResourceExhaustedError(absl::StrCat(
                        "the server is at its limit of ", options_.max_in_flight,
                        " lookups in flight; retry or use another replica")),
           start, true);
    return reactor;
  }
  auto call = std::make_shared<LookupCall>();
  call->store = std::move(store);
  call->start = start;
  absl::Status status =
      DecodeLookupRequest(*request, call->store->manifest(), options_.limits, &call->decoded);
  if (!status.ok()) {
    Finish(reactor, status, start, true);
    return reactor;
  }
  if (call->store->PinHot(call->decoded, &call->scratch) == 0) {
    Finish(reactor, Complete(*call, response), start, true);  // all hot: no I/O, answer inline
  } else {
    cold_pool_->Submit([this, call, reactor, response] {
      Finish(reactor, Complete(*call, response), call->start, true);
    });
  }
  return reactor;
}

grpc::ServerUnaryReactor* MemoryServer::Impl::Info(grpc::CallbackServerContext* context,
                                                   const v1::InfoRequest*,
                                                   v1::InfoResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::shared_ptr<const ValueStore> store = this->store();
  if (store == nullptr) {
    reactor->Finish(ToGrpc(absl::UnavailableError("the memory server is still loading its store")));
    return reactor;
  }
  const StoreManifest& m = store->manifest();
  response->set_model_id(m.model_id);
  response->set_store_version(m.version);
  for (const BlockSpec& b : m.blocks) {
    v1::BlockInfo* info = response->add_blocks();
    info->set_layer(static_cast<uint32_t>(b.layer));
    info->set_row_begin(b.row_begin);
    info->set_row_end(b.row_end);
    info->set_col_begin(static_cast<uint32_t>(b.col_begin));
    info->set_col_end(static_cast<uint32_t>(b.col_end));
    info->set_crc32c(b.crc32c);
  }
  response->set_num_rows(m.num_rows);
  response->set_expand(static_cast<uint32_t>(m.expand));
  response->set_value_dim(static_cast<uint32_t>(m.value_dim));
  response->set_num_cores(static_cast<uint32_t>(m.cores));
  response->set_num_memory_layers(static_cast<uint32_t>(m.num_memory_layers));
  response->set_store_dtype(ToProto(m.dtype));
  const HotTierInfo hot = store->hot_info();
  response->set_hot_capacity_bytes(hot.capacity_bytes);
  response->set_hot_bytes(hot.bytes_used);
  response->set_fully_hot(hot.complete);
  response->set_hot_tier(hot.kind);
  response->set_max_batch_tokens(options_.limits.max_batch_tokens);
  response->set_max_batch_selections(options_.limits.max_batch_selections);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* MemoryServer::Impl::Ping(grpc::CallbackServerContext* context,
                                                   const v1::PingRequest*, v1::PingResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

MemoryServer::MemoryServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MemoryServer::~MemoryServer() { impl_->Shutdown(); }

absl::StatusOr<std::unique_ptr<MemoryServer>> MemoryServer::Start(
    const MemoryServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  UM_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<MemoryServer>(new MemoryServer(std::move(impl)));
}

absl::Status MemoryServer::Load() { return impl_->Load(); }
absl::Status MemoryServer::Reload() { return impl_->Reload(); }
void MemoryServer::Shutdown() { impl_->Shutdown(); }
const std::vector<std::string>& MemoryServer::addresses() const { return impl_->addresses(); }
int MemoryServer::metrics_port() const { return impl_->metrics_port(); }
std::string MemoryServer::version() const {
  auto store = impl_->store();
  return store ? store->manifest().version : "";
}

}  // namespace ultramem::memory
