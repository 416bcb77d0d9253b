// A conversation with an ultramem.v1.ChatService endpoint (the gateway or a compute node), as
// ultramem-chat uses it: each Send streams one reply and, when it succeeds, keeps both turns.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem::services {

struct ChatClientOptions {
  std::string endpoint = "localhost:7000";
  std::string token;       // sent as "authorization: Bearer <token>" when not empty
  std::string tls_ca_pem;  // TLS trusting this CA when not empty; plaintext otherwise
  std::string model;       // empty: the server's default
  std::string system_prompt;  // a ROLE_SYSTEM message first, when not empty
  ultramem::v1::SamplingParams sampling;
  int64_t timeout_ms = 0;  // per reply; 0: none
};

struct ChatTurn {
  std::string text;  // the whole reply
  ultramem::v1::FinishReason finish_reason = ultramem::v1::FINISH_REASON_UNSPECIFIED;
  ultramem::v1::Usage usage;                 // as the server reports it
  double client_first_chunk_seconds = 0;     // measured here, network included
};

class ChatSession {
 public:
  explicit ChatSession(const ChatClientOptions& options);

  // Sends the conversation so far plus `user_text`; calls `on_text` with each chunk's text as it
  // arrives. On success both turns join the conversation; on failure it is unchanged and the
  // server's status is returned (its code and message).
  absl::StatusOr<ChatTurn> Send(const std::string& user_text,
                                const std::function<void(const std::string&)>& on_text);

  const std::vector<ultramem::v1::ChatMessage>& history() const { return history_; }

 private:
  const ChatClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ultramem::v1::ChatService::Stub> stub_;
  std::vector<ultramem::v1::ChatMessage> history_;
};

}  // namespace ultramem::services
