// Implementation of services/chat_forwarder.h. Every piece of state of one call is guarded by
// ChatCall::mu_. Client-side operations (StartCall, StartRead, RemoveHold, TryCancel) and
// StartWrite are issued under it: gRPC never runs a reaction inline from them. Finish is issued
// after unlocking and as the last action, since OnDone (which deletes the call) may follow at once
// on another thread.
#include "services/chat_forwarder.h"

#include <chrono>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "services/backend_pool.h"
#include "services/gateway_metrics.h"
#include "services/grpc_util.h"

namespace ultramem::services {
namespace {

namespace v1 = ::ultramem::v1;
using Clock = std::chrono::steady_clock;

class ChatCall;

// One try of the call on one backend. Owned by its ChatCall; fields guarded by ChatCall::mu_.
class Attempt final : public grpc::ClientReadReactor<v1::ChatChunk> {
 public:
  Attempt(ChatCall* call, std::shared_ptr<Backend> backend)
      : call_(call), backend_(std::move(backend)) {}
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  ChatCall* const call_;
  const std::shared_ptr<Backend> backend_;  // alive while the attempt is, even if removed
  std::unique_ptr<grpc::ClientContext> context_;
  v1::ChatChunk chunk_;  // the read target
  // Our hold keeps OnDone away while we may still start a read (reads are started from the
  // client's OnWriteDone, outside this reactor's own reactions). Released exactly once.
  bool holding_ = false;
  bool reading_ = false;  // a read is outstanding
};

class ChatCall final : public grpc::ServerWriteReactor<v1::ChatChunk> {
 public:
  ChatCall(const ForwarderEnv& env, grpc::CallbackServerContext* context,
           const v1::ChatRequest* request)
      : env_(env), context_(context), request_(request), start_(Clock::now()) {}

  void Begin(const absl::Status& admission);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

  void OnBackendRead(Attempt* attempt, bool ok);
  void OnBackendDone(Attempt* attempt, const grpc::Status& status);

 private:
  void StartAttemptLocked(std::shared_ptr<Backend> backend) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopAttemptLocked(Attempt* attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void ReleaseHoldLocked(Attempt* attempt);
  // True when the call may finish now (final status known, no write outstanding); marks it.
  bool TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Metrics, then Finish. The last thing a caller does with `this`.
  void FinishCall(const grpc::Status& status);

  const ForwarderEnv env_;
  grpc::CallbackServerContext* const context_;
  const v1::ChatRequest* const request_;
  const Clock::time_point start_;
  bool forwarded_ = false;  // admitted: counted in flight and in the latency histogram

  absl::Mutex mu_;
  std::vector<std::unique_ptr<Attempt>> attempts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Backend>> tried_ ABSL_GUARDED_BY(mu_);
  Attempt* current_ ABSL_GUARDED_BY(mu_) = nullptr;  // until its OnDone
  v1::ChatChunk out_ ABSL_GUARDED_BY(mu_);            // the write source
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;  // client cancelled or went away
  bool got_chunk_ ABSL_GUARDED_BY(mu_) = false;
  bool final_ready_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

void Attempt::OnReadDone(bool ok) { call_->OnBackendRead(this, ok); }
void Attempt::OnDone(const grpc::Status& status) {
  call_->OnBackendDone(this, status);  // may delete the call and this attempt: nothing after
}

void ChatCall::Begin(const absl::Status& admission) {
  if (!admission.ok()) {
    FinishCall(ToGrpc(admission));
    return;
  }
  forwarded_ = true;
  env_.metrics->requests_in_flight.Increment();
  std::shared_ptr<Backend> backend = env_.pool->Pick();
  if (backend == nullptr) {
    const int known = env_.pool->size();
    FinishCall(grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        absl::StrCat("no healthy compute node (", known,
                     " known, none passes its health check); retry in a few seconds")));
    return;
  }
  absl::MutexLock lock(&mu_);
  StartAttemptLocked(std::move(backend));
}

void ChatCall::StartAttemptLocked(std::shared_ptr<Backend> backend) {
  auto attempt = std::make_unique<Attempt>(this, backend);
  // Carries the client's deadline, and cancels the backend call when the client's call ends.
  attempt->context_ = grpc::ClientContext::FromCallbackServerContext(*context_);
  env_.pool->Begin(backend.get());
  tried_.push_back(backend);
  backend->stub->async()->Chat(attempt->context_.get(), request_, attempt.get());
  attempt->holding_ = true;
  attempt->AddHold();
  attempt->reading_ = true;
  attempt->StartRead(&attempt->chunk_);
  attempt->StartCall();
  current_ = attempt.get();
  attempts_.push_back(std::move(attempt));
}

void ChatCall::ReleaseHoldLocked(Attempt* attempt) {
  if (!attempt->holding_) return;
  attempt->holding_ = false;
  attempt->RemoveHold();
}

void ChatCall::StopAttemptLocked(Attempt* attempt) {
  attempt->context_->TryCancel();
  // An outstanding read completes (cancelled) and releases the hold in OnBackendRead.
  if (!attempt->reading_) ReleaseHoldLocked(attempt);
}

void ChatCall::OnBackendRead(Attempt* attempt, bool ok) {
  absl::MutexLock lock(&mu_);
  attempt->reading_ = false;
  if (!ok || cancelled_) {  // end of the backend's stream (its status comes in OnDone)
    ReleaseHoldLocked(attempt);
    return;
  }
  if (!got_chunk_) {
    got_chunk_ = true;
    env_.metrics->time_to_first_token.Observe(
        std::chrono::duration<double>(Clock::now() - start_).count());
  }
  out_.Swap(&attempt->chunk_);
  attempt->chunk_.Clear();
  writing_ = true;
  StartWrite(&out_);
}

void ChatCall::OnWriteDone(bool ok) {
  bool finish = false;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    Attempt* attempt = current_;
    if (!ok) {  // the client is gone
      cancelled_ = true;
      if (attempt != nullptr) StopAttemptLocked(attempt);
    } else if (attempt != nullptr && attempt->holding_ && !cancelled_) {
      attempt->reading_ = true;
      attempt->StartRead(&attempt->chunk_);
    }
    finish = TakeFinishLocked();
    status = final_status_;
  }
  if (finish) FinishCall(status);
}

void ChatCall::OnCancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (current_ != nullptr) StopAttemptLocked(current_);
}

void ChatCall::OnBackendDone(Attempt* attempt, const grpc::Status& status) {
  bool finish = false;
  grpc::Status final_status;
  {
    absl::MutexLock lock(&mu_);
    env_.pool->End(attempt->backend_.get());
    current_ = nullptr;
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && !got_chunk_ && !cancelled_ &&
        !env_.draining->load() && static_cast<int>(tried_.size()) < env_.max_attempts) {
      // Nothing reached the client: another backend can serve the call without duplicating output.
      if (std::shared_ptr<Backend> next = env_.pool->Pick(tried_); next != nullptr) {
        UM_LOG_WARNING("backend ", attempt->backend_->address, " unavailable before its first chunk (",
                       status.error_message(), "); retrying on ", next->address);
        StartAttemptLocked(std::move(next));
        return;
      }
    }
    final_status_ = cancelled_ && status.ok()
                        ? grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled")
                        : status;
    final_ready_ = true;
    finish = TakeFinishLocked();
    final_status = final_status_;
  }
  if (finish) FinishCall(final_status);
}

bool ChatCall::TakeFinishLocked() {
  if (!final_ready_ || writing_ || current_ != nullptr || finished_) return false;
  finished_ = true;
  return true;
}

void ChatCall::FinishCall(const grpc::Status& status) {
  env_.metrics->CountRequest(static_cast<absl::StatusCode>(status.error_code()));
  if (forwarded_) {
    env_.metrics->requests_in_flight.Decrement();
    env_.metrics->request_latency.Observe(
        std::chrono::duration<double>(Clock::now() - start_).count());
  }
  Finish(status);
}

}  // namespace

grpc::ServerWriteReactor<v1::ChatChunk>* ForwardChat(const ForwarderEnv& env,
                                                      grpc::CallbackServerContext* context,
                                                      const v1::ChatRequest* request,
                                                      const absl::Status& admission) {
  auto* call = new ChatCall(env, context, request);
  call->Begin(admission);  // may already have finished (and be done) after this
  return call;
}

}  // namespace ultramem::services
