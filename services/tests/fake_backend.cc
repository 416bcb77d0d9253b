// Implementation of services/tests/fake_backend.h.
#include "services/tests/fake_backend.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "proto/grpc_setup.h"
#include "services/grpc_util.h"

namespace ultramem::services::testing {

namespace v1 = ::ultramem::v1;

std::unique_ptr<FakeBackend> FakeBackend::Start(const std::string& name, const FakeTls& tls) {
  EnableStandardGrpcServices();
  std::unique_ptr<FakeBackend> backend(new FakeBackend(name));
  {
    absl::MutexLock lock(&backend->mu_);
    backend->load_.set_max_running(10);
    backend->load_.set_max_waiting(100);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0",
                           MakeServerCredentials(tls.cert_pem, tls.key_pem, tls.client_ca_pem),
                           &port);
  builder.RegisterService(backend.get());
  backend->server_ = builder.BuildAndStart();
  if (backend->server_ == nullptr || port == 0) return nullptr;
  backend->address_ = absl::StrCat("127.0.0.1:", port);
  return backend;
}

FakeBackend::~FakeBackend() { Shutdown(); }

void FakeBackend::Shutdown() {
  if (server_ == nullptr) return;
  // Blocked handlers see the cancellation this causes after the deadline.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  server_->Wait();
  server_.reset();
}

void FakeBackend::SetMode(FakeMode mode, grpc::Status fail_status) {
  absl::MutexLock lock(&mu_);
  mode_ = mode;
  fail_status_ = std::move(fail_status);
}

void FakeBackend::SetLoad(int running, int waiting, int max_running) {
  absl::MutexLock lock(&mu_);
  load_.set_running(running);
  load_.set_waiting(waiting);
  load_.set_max_running(max_running);
}

void FakeBackend::SetChunks(std::vector<std::string> chunks, absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  chunks_ = std::move(chunks);
  chunk_delay_ = delay;
}

void FakeBackend::Release() {
  absl::MutexLock lock(&mu_);
  released_ = true;
}

std::string FakeBackend::expected_text() const {
  absl::MutexLock lock(&mu_);
  std::string text = name_ + ":";
  for (const std::string& c : chunks_) text += c;
  return text;
}

int FakeBackend::chat_calls() const {
  absl::MutexLock lock(&mu_);
  return chat_calls_;
}
int FakeBackend::load_calls() const {
  absl::MutexLock lock(&mu_);
  return load_calls_;
}
int FakeBackend::cancellations() const {
  absl::MutexLock lock(&mu_);
  return cancellations_;
}
v1::ChatRequest FakeBackend::last_request() const {
  absl::MutexLock lock(&mu_);
  return last_request_;
}
std::optional<absl::Time> FakeBackend::last_deadline() const {
  absl::MutexLock lock(&mu_);
  return last_deadline_;
}

bool FakeBackend::WaitForCount(const int* counter, int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto reached = [counter, n]() { return *counter >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
}
bool FakeBackend::WaitForChatCalls(int n, absl::Duration timeout) const {
  return WaitForCount(&chat_calls_, n, timeout);
}
bool FakeBackend::WaitForLoadCalls(int n, absl::Duration timeout) const {
  return WaitForCount(&load_calls_, n, timeout);
}
bool FakeBackend::WaitForCancellations(int n, absl::Duration timeout) const {
  return WaitForCount(&cancellations_, n, timeout);
}

grpc::Status FakeBackend::WaitUntilCancelled(grpc::ServerContext* context) {
  // The sync API has no cancellation callback; a short poll stands in for the compute node's
  // step loop noticing the cancellation.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (!context->IsCancelled() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
  absl::MutexLock lock(&mu_);
  ++cancellations_;
  return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
}

grpc::Status FakeBackend::Chat(grpc::ServerContext* context, const v1::ChatRequest* request,
                               grpc::ServerWriter<v1::ChatChunk>* writer) {
  FakeMode mode;
  grpc::Status fail_status;
  std::vector<std::string> chunks;
  absl::Duration delay;
  {
    absl::MutexLock lock(&mu_);
    ++chat_calls_;
    last_request_ = *request;
    const auto deadline = context->deadline();
    last_deadline_.reset();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      last_deadline_ = absl::FromChrono(deadline);
    }
    mode = mode_;
    fail_status = fail_status_;
    chunks = chunks_;
    delay = chunk_delay_;
  }
  v1::ChatChunk chunk;
  switch (mode) {
    case FakeMode::kFailUnavailable:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, absl::StrCat(name_, " is down"));
    case FakeMode::kFailWith:
      return fail_status;
    case FakeMode::kBlock:
      return WaitUntilCancelled(context);
    case FakeMode::kChunkThenUnavailable:
    case FakeMode::kChunkThenBlock:
      chunk.set_text(name_ + ":");
      writer->Write(chunk);
      if (mode == FakeMode::kChunkThenBlock) return WaitUntilCancelled(context);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, absl::StrCat(name_, " broke mid-stream"));
    case FakeMode::kStream:
    case FakeMode::kHoldAfterFirstChunk:
      break;
  }
  int tokens = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (delay > absl::ZeroDuration()) absl::SleepFor(delay);  // the "model" working
    chunk.Clear();
    chunk.set_text(i == 0 ? name_ + ":" + chunks[i] : chunks[i]);
    chunk.add_token_ids(static_cast<int>(i));
    ++tokens;
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    if (i == 0 && mode == FakeMode::kHoldAfterFirstChunk) {
      absl::MutexLock lock(&mu_);
      const absl::Time give_up = absl::Now() + absl::Seconds(30);
      // Short waits: the sync API has no cancellation callback (see WaitUntilCancelled).
      while (!mu_.AwaitWithTimeout(absl::Condition(&released_), absl::Milliseconds(1))) {
        if (context->IsCancelled() || absl::Now() > give_up) {
          return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while held");
        }
      }
    }
  }
  chunk.Clear();
  chunk.set_finish_reason(v1::FINISH_REASON_STOP);
  chunk.mutable_usage()->set_prompt_tokens(request->messages_size());
  chunk.mutable_usage()->set_completion_tokens(tokens);
  writer->Write(chunk);
  return grpc::Status::OK;
}

grpc::Status FakeBackend::ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                                     v1::ListModelsResponse* response) {
  v1::ModelInfo* model = response->add_models();
  model->set_name("fake-" + name_);
  model->set_context_length(128);
  return grpc::Status::OK;
}

grpc::Status FakeBackend::Load(grpc::ServerContext*, const v1::LoadRequest*,
                               v1::LoadResponse* response) {
  absl::MutexLock lock(&mu_);
  ++load_calls_;
  *response = load_;
  return grpc::Status::OK;
}

}  // namespace ultramem::services::testing
