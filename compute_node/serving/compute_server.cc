// Implementation of compute_node/serving/compute_server.h.
#include "compute_node/serving/compute_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"
#include "compute_node/serving/chat_service.h"
#include "compute_node/serving/metrics_http_server.h"
#include "compute_node/serving/serving_metrics.h"
#include "grpc_setup.h"
#include "prometheus/registry.h"

namespace ultramem {

class ComputeServer::Impl {
 public:
  explicit Impl(ComputeServerOptions options) : options_(std::move(options)) {}
  ~Impl() { Shutdown(); }

  absl::Status Start();
  void Shutdown();

  ComputeServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  std::unique_ptr<MetricsHttpServer> exposer_;
  std::unique_ptr<ServingMetrics> metrics_;
  std::unique_ptr<ModelRuntime> runtime_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ChatServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> addresses_;
  int metrics_port_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread health_;
  std::once_flag shutdown_once_;
};

absl::Status ComputeServer::Impl::Start() {
  EnableStandardGrpcServices();
  metrics_ = std::make_unique<ServingMetrics>(*registry_);
  if (!options_.metrics_address.empty()) {
    UM_ASSIGN_OR_RETURN(exposer_, MetricsHttpServer::Start(options_.metrics_address, registry_));
    metrics_port_ = exposer_->port();
  }
  options_.runtime.remote.registry = registry_.get();
  UM_ASSIGN_OR_RETURN(runtime_, OpenModelRuntime(options_.runtime));
  if (options_.model_name.empty()) {
    std::string dir = options_.runtime.model_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    options_.model_name = std::filesystem::path(dir).filename().string();
  }
  const ModelConfig& cfg = runtime_->engine->config();
  // What max_running full-context sequences would hold, for the usage ratio.
  const double kv_budget = 2.0 * cfg.num_layers * cfg.num_key_value_heads * cfg.head_dim *
                           sizeof(float) * cfg.max_position_embeddings * options_.scheduler.max_running;
  SchedulerHooks hooks;
  ServingMetrics* metrics = metrics_.get();
  hooks.on_step = [metrics, kv_budget](const SchedulerStats& s) {
    metrics->SetLoad(s.running, s.waiting, s.kv_cache_bytes, s.kv_cache_bytes / kv_budget);
  };
  scheduler_ = std::make_unique<Scheduler>(runtime_->engine.get(), options_.scheduler, std::move(hooks));
  ChatServiceOptions so;
  so.model_name = options_.model_name;
  so.default_max_tokens = options_.default_max_tokens;
  so.max_running = options_.scheduler.max_running;
  so.max_waiting = options_.scheduler.max_waiting;
  service_ = std::make_unique<ChatServiceImpl>(runtime_.get(), scheduler_.get(), metrics_.get(), so);

  const auto creds = MakeServerCredentials(options_.tls_cert_pem, options_.tls_key_pem,
                                           options_.tls_client_ca_pem);
  grpc::ServerBuilder builder;
  std::vector<int> ports(options_.listen_addresses.size(), 0);
  for (size_t i = 0; i < ports.size(); ++i) {
    builder.AddListeningPort(options_.listen_addresses[i], creds, &ports[i]);
  }
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", absl::StrJoin(options_.listen_addresses, ", ")));
  }
  for (size_t i = 0; i < ports.size(); ++i) {
    const std::string& address = options_.listen_addresses[i];
    if (address.rfind("unix:", 0) == 0) {
      addresses_.push_back(address);
    } else {
      if (ports[i] == 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
      addresses_.push_back(absl::StrCat(address.substr(0, address.rfind(':')), ":", ports[i]));
    }
  }
  // Health: SERVING while every memory block has a live replica (always, in-process).
  auto set_health = [this] {
    bool live = true;
    if (runtime_->remote != nullptr) {
      runtime_->remote->Probe();
      live = runtime_->remote->AllBlocksLive();
    }
    server_->GetHealthCheckService()->SetServingStatus(live);
    return live;
  };
  if (!set_health() && runtime_->remote) {
    UM_LOG_WARNING("not serving yet: no live replica for ", runtime_->remote->DeadBlocks());
  }
  health_ = std::thread([this, set_health] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(options_.health_interval_ms), [this] { return stopping_; })) {
      lock.unlock();
      set_health();
      lock.lock();
    }
  });
  UM_LOG_INFO("compute node serving '", options_.model_name, "' on ", absl::StrJoin(addresses_, ", "),
              metrics_port_ ? absl::StrCat(", metrics on port ", metrics_port_) : "");
  return absl::OkStatus();
}

void ComputeServer::Impl::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (health_.joinable()) health_.join();
    if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
    // Ends every stream (queued and running requests finish with UNAVAILABLE), then the server.
    if (scheduler_) scheduler_->Shutdown();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
}

ComputeServer::ComputeServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ComputeServer::~ComputeServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<ComputeServer>> ComputeServer::Start(ComputeServerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  UM_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<ComputeServer>(new ComputeServer(std::move(impl)));
}

const std::vector<std::string>& ComputeServer::addresses() const { return impl_->addresses_; }
int ComputeServer::metrics_port() const { return impl_->metrics_port_; }
void ComputeServer::Shutdown() { impl_->Shutdown(); }

}  // namespace ultramem
