// Implementation of services/gateway.h: the callback-API service (Chat admission, ListModels
// forwarding), health that follows the backends, and the life cycle (start, drain, stop).
#include "services/gateway.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/status.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "proto/grpc_setup.h"
#include "services/backend_pool.h"
#include "services/chat_forwarder.h"
#include "services/gateway_metrics.h"
#include "services/grpc_util.h"
#include "services/request_checks.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem::services {

namespace v1 = ::ultramem::v1;

struct ListModelsCall;

class Gateway::Impl final : public v1::ChatService::CallbackService {
 public:
  explicit Impl(const GatewayOptions& options) : options_(options) {}
  ~Impl() override { Shutdown(); }

  absl::Status Start();
  void Shutdown();
  bool WaitForHealthyBackends(int count, absl::Duration timeout) {
    return pool_->WaitForHealthy(count, timeout) && !draining_.load();
  }

  grpc::ServerWriteReactor<v1::ChatChunk>* Chat(grpc::CallbackServerContext* context,
                                                const v1::ChatRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  int healthy_backends() const { return pool_->healthy_count(); }
  int known_backends() const { return pool_->size(); }

 private:
  absl::Status Authenticate(const grpc::CallbackServerContext& context) const;
  void OnHealthChange(int healthy);
  void ApplyHealthLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(health_mu_);
  void ForwardListModels(ListModelsCall* call, std::shared_ptr<Backend> backend);

  const GatewayOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<GatewayMetrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<BackendPool> pool_;  // outlives the server (destroyed after it)
  std::unique_ptr<grpc::Server> server_;
  ForwarderEnv env_;
  std::string address_;
  int metrics_port_ = 0;
  std::atomic<bool> draining_{false};
  std::once_flag shutdown_once_;

  absl::Mutex health_mu_;
  grpc::Server* health_server_ ABSL_GUARDED_BY(health_mu_) = nullptr;  // set once serving
  int healthy_ ABSL_GUARDED_BY(health_mu_) = 0;
};

absl::Status Gateway::Impl::Start() {
  const GatewayOptions& o = options_;
  if (o.backends.empty()) {
    return absl::InvalidArgumentError("no backends: name at least one compute node (host:port)");
  }
  if (o.tls_cert_pem.empty() != o.tls_key_pem.empty()) {
    return absl::InvalidArgumentError("TLS for clients needs both a certificate and its key");
  }
  if (o.backend_tls_cert_pem.empty() != o.backend_tls_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "mutual TLS to compute nodes needs both a client certificate and its key");
  }
  if (!o.backend_tls_cert_pem.empty() && o.backend_tls_ca_pem.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate for compute nodes needs the CA that signs their certificates too");
  }
  if (o.poll_interval_ms <= 0 || o.poll_timeout_ms <= 0 || o.max_attempts <= 0 ||
      o.resolve_interval_ms <= 0) {
    return absl::InvalidArgumentError(
        "poll interval, poll timeout, resolve interval and max attempts must be positive");
  }
  EnableStandardGrpcServices();
  registry_ = std::make_shared<prometheus::Registry>();
  metrics_ = std::make_unique<GatewayMetrics>(*registry_);
  if (!o.metrics_address.empty()) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(o.metrics_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", o.metrics_address, ": ", e.what()));
    }
    exposer_->RegisterCollectable(registry_);
    const auto ports = exposer_->GetListeningPorts();
    metrics_port_ = ports.empty() ? 0 : ports[0];
  }

  BackendPoolOptions pool_options;
  pool_options.addresses = o.backends;
  pool_options.credentials =
      MakeChannelCredentials(o.backend_tls_ca_pem, o.backend_tls_cert_pem, o.backend_tls_key_pem);
  pool_options.poll_interval_ms = o.poll_interval_ms;
  pool_options.poll_timeout_ms = o.poll_timeout_ms;
  pool_options.max_message_bytes = o.max_message_bytes;
  pool_options.resolve_interval_ms = o.resolve_interval_ms;
  pool_options.resolver = o.resolver;
  pool_ = std::make_unique<BackendPool>(pool_options, metrics_.get(),
                                        [this](int healthy) { OnHealthChange(healthy); });
  env_.pool = pool_.get();
  env_.metrics = metrics_.get();
  env_.max_attempts = o.max_attempts;
  env_.draining = &draining_;

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.listen_address, MakeServerCredentials(o.tls_cert_pem, o.tls_key_pem),
                           &port);
  builder.RegisterService(this);
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    if (server_ != nullptr) server_->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.listen_address));
  }
  if (o.listen_address.rfind("unix:", 0) == 0) {
    address_ = o.listen_address;
  } else {
    address_ = absl::StrCat(o.listen_address.substr(0, o.listen_address.rfind(':')), ":", port);
  }
  {
    absl::MutexLock lock(&health_mu_);
    health_server_ = server_.get();
    ApplyHealthLocked();
  }
  UM_LOG_INFO("gateway listening on ", address_, o.tls_cert_pem.empty() ? "" : " (TLS)",
              metrics_port_ ? absl::StrCat(", metrics on port ", metrics_port_) : "",
              "; ", pool_->size(), " backend(s) from ", o.backends.size(), " address(es)",
              o.auth_token.empty() ? "; no auth token" : "; bearer token required");
  return absl::OkStatus();
}

void Gateway::Impl::OnHealthChange(int healthy) {
  absl::MutexLock lock(&health_mu_);
  healthy_ = healthy;
  ApplyHealthLocked();
}

void Gateway::Impl::ApplyHealthLocked() {
  if (health_server_ == nullptr) return;
  health_server_->GetHealthCheckService()->SetServingStatus(healthy_ > 0 && !draining_.load());
}

void Gateway::Impl::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    draining_.store(true);
    {
      absl::MutexLock lock(&health_mu_);
      ApplyHealthLocked();
    }
    if (server_ != nullptr) {
      UM_LOG_INFO("gateway draining: ", metrics_->requests_in_flight.Value(), " streams in flight");
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(options_.drain_timeout_ms));
      server_->Wait();
      absl::MutexLock lock(&health_mu_);
      health_server_ = nullptr;
    }
    if (pool_ != nullptr) pool_->Stop();
    exposer_.reset();
    UM_LOG_INFO("gateway stopped");
  });
}

absl::Status Gateway::Impl::Authenticate(const grpc::CallbackServerContext& context) const {
  if (options_.auth_token.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return CheckBearerToken(nullptr, options_.auth_token);
  const std::string header(it->second.data(), it->second.size());
  return CheckBearerToken(&header, options_.auth_token);
}

grpc::ServerWriteReactor<v1::ChatChunk>* Gateway::Impl::Chat(grpc::CallbackServerContext* context,
                                                             const v1::ChatRequest* request) {
  absl::Status admission = Authenticate(*context);
  if (admission.ok()) admission = ValidateChatRequest(*request);
  return ForwardChat(env_, context, request, admission);
}

// One ListModels through the gateway: tried on healthy backends until one answers with anything
// but UNAVAILABLE.
struct ListModelsCall {
  grpc::CallbackServerContext* server_context;
  grpc::ServerUnaryReactor* reactor;
  const v1::ListModelsRequest* request;
  v1::ListModelsResponse* response;
  std::unique_ptr<grpc::ClientContext> context;
  std::vector<std::shared_ptr<Backend>> tried;  // alive until the call is done
};

grpc::ServerUnaryReactor* Gateway::Impl::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest* request,
                                                    v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status admission = Authenticate(*context);
  std::shared_ptr<Backend> backend = admission.ok() ? pool_->Pick() : nullptr;
  if (admission.ok() && backend == nullptr) {
    admission = absl::UnavailableError("no healthy compute node; retry in a few seconds");
  }
  if (!admission.ok()) {
    metrics_->CountRequest(admission.code());
    reactor->Finish(ToGrpc(admission));
    return reactor;
  }
  auto* call = new ListModelsCall{context, reactor, request, response, nullptr, {}};
  ForwardListModels(call, std::move(backend));
  return reactor;
}

void Gateway::Impl::ForwardListModels(ListModelsCall* call, std::shared_ptr<Backend> backend) {
  call->context = grpc::ClientContext::FromCallbackServerContext(*call->server_context);
  call->tried.push_back(backend);
  call->response->Clear();
  pool_->Begin(backend.get());
  Backend* b = backend.get();  // kept alive by call->tried
  b->stub->async()->ListModels(
      call->context.get(), call->request, call->response,
      [this, call, b](grpc::Status status) {
        pool_->End(b);
        if (status.error_code() == grpc::StatusCode::UNAVAILABLE && !draining_.load() &&
            static_cast<int>(call->tried.size()) < options_.max_attempts) {
          if (std::shared_ptr<Backend> next = pool_->Pick(call->tried); next != nullptr) {
            ForwardListModels(call, std::move(next));
            return;
          }
        }
        metrics_->CountRequest(static_cast<absl::StatusCode>(status.error_code()));
        grpc::ServerUnaryReactor* reactor = call->reactor;
        delete call;
        reactor->Finish(status);
      });
}

Gateway::Gateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gateway::~Gateway() { impl_->Shutdown(); }

absl::StatusOr<std::unique_ptr<Gateway>> Gateway::Start(const GatewayOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  UM_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Gateway>(new Gateway(std::move(impl)));
}

bool Gateway::WaitForHealthyBackends(int count, absl::Duration timeout) {
  return impl_->WaitForHealthyBackends(count, timeout);
}
void Gateway::Shutdown() { impl_->Shutdown(); }
const std::string& Gateway::address() const { return impl_->address(); }
int Gateway::metrics_port() const { return impl_->metrics_port(); }
int Gateway::healthy_backends() const { return impl_->healthy_backends(); }
int Gateway::known_backends() const { return impl_->known_backends(); }

}  // namespace ultramem::services
