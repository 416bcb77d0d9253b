// A fake compute node for the gateway's tests: serves ultramem.v1.ChatService (sync API) with a
// behaviour, load and chunk list the test controls, and records what it saw (calls, deadlines,
// cancellations) with waits on those events.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem::services::testing {

enum class FakeMode {
  kStream,              // the chunks (chunk_delay apart), then a final chunk with usage
  kFailUnavailable,     // UNAVAILABLE before any chunk
  kFailWith,            // `fail_status` before any chunk
  kChunkThenUnavailable,  // one chunk, then UNAVAILABLE
  kChunkThenBlock,      // one chunk, then waits until the call is cancelled
  kBlock,               // waits until the call is cancelled, sending nothing
  kHoldAfterFirstChunk,  // like kStream, but waits for Release() after the first chunk
};

struct FakeTls {
  std::string cert_pem, key_pem;
  std::string client_ca_pem;  // require client certificates signed by this (mutual TLS)
};

class FakeBackend final : public ultramem::v1::ChatService::Service {
 public:
  // Listens on 127.0.0.1, a free port. `name` prefixes its first chunk ("<name>:").
  static std::unique_ptr<FakeBackend> Start(const std::string& name, const FakeTls& tls = {});
  ~FakeBackend() override;

  void SetMode(FakeMode mode, grpc::Status fail_status = grpc::Status::OK);
  void SetLoad(int running, int waiting, int max_running);
  void SetChunks(std::vector<std::string> chunks, absl::Duration delay);
  // Lets every held (kHoldAfterFirstChunk) stream, current and future, go on.
  void Release();

  const std::string& address() const { return address_; }
  std::string expected_text() const;  // what kStream sends, concatenated
  int chat_calls() const;
  int load_calls() const;
  int cancellations() const;
  // The last ChatRequest received.
  ultramem::v1::ChatRequest last_request() const;
  // The deadline the last Chat carried (nullopt: none).
  std::optional<absl::Time> last_deadline() const;

  // Waits (up to `timeout`) for the counters to reach `n`; false on timeout.
  bool WaitForChatCalls(int n, absl::Duration timeout) const;
  bool WaitForLoadCalls(int n, absl::Duration timeout) const;
  bool WaitForCancellations(int n, absl::Duration timeout) const;
  void Shutdown();

  grpc::Status Chat(grpc::ServerContext* context, const ultramem::v1::ChatRequest* request,
                    grpc::ServerWriter<ultramem::v1::ChatChunk>* writer) override;
  grpc::Status ListModels(grpc::ServerContext* context, const ultramem::v1::ListModelsRequest*,
                          ultramem::v1::ListModelsResponse* response) override;
  grpc::Status Load(grpc::ServerContext* context, const ultramem::v1::LoadRequest*,
                    ultramem::v1::LoadResponse* response) override;

 private:
  explicit FakeBackend(const std::string& name) : name_(name) {}
  grpc::Status WaitUntilCancelled(grpc::ServerContext* context);
  bool WaitForCount(const int* counter, int n, absl::Duration timeout) const;

  const std::string name_;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;

  mutable absl::Mutex mu_;
  FakeMode mode_ ABSL_GUARDED_BY(mu_) = FakeMode::kStream;
  grpc::Status fail_status_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> chunks_ ABSL_GUARDED_BY(mu_) = {"Hello", ", ", "world"};
  absl::Duration chunk_delay_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  ultramem::v1::LoadResponse load_ ABSL_GUARDED_BY(mu_);
  int chat_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int load_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int cancellations_ ABSL_GUARDED_BY(mu_) = 0;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Time> last_deadline_ ABSL_GUARDED_BY(mu_);
  ultramem::v1::ChatRequest last_request_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ultramem::services::testing
