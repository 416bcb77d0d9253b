// Implementation of services/chat_client.h.
#include "services/chat_client.h"

#include <chrono>

#include "services/grpc_util.h"

namespace ultramem::services {

namespace v1 = ::ultramem::v1;

ChatSession::ChatSession(const ChatClientOptions& options) : options_(options) {
  channel_ = grpc::CreateChannel(options_.endpoint, MakeChannelCredentials(options_.tls_ca_pem));
  stub_ = v1::ChatService::NewStub(channel_);
  if (!options_.system_prompt.empty()) {
    v1::ChatMessage system;
    system.set_role(v1::ROLE_SYSTEM);
    system.set_content(options_.system_prompt);
    history_.push_back(std::move(system));
  }
}

absl::StatusOr<ChatTurn> ChatSession::Send(const std::string& user_text,
                                           const std::function<void(const std::string&)>& on_text) {
  v1::ChatRequest request;
  request.set_model(options_.model);
  *request.mutable_sampling() = options_.sampling;
  for (const v1::ChatMessage& m : history_) *request.add_messages() = m;
  v1::ChatMessage* user = request.add_messages();
  user->set_role(v1::ROLE_USER);
  user->set_content(user_text);

  grpc::ClientContext context;
  if (!options_.token.empty()) context.AddMetadata("authorization", "Bearer " + options_.token);
  if (options_.timeout_ms > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(options_.timeout_ms));
  }
  const auto start = std::chrono::steady_clock::now();
  ChatTurn turn;
  bool first = true;
  auto reader = stub_->Chat(&context, request);
  v1::ChatChunk chunk;
  while (reader->Read(&chunk)) {
    if (first) {
      turn.client_first_chunk_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      first = false;
    }
    if (!chunk.text().empty()) {
      turn.text += chunk.text();
      on_text(chunk.text());
    }
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      turn.finish_reason = chunk.finish_reason();
    }
    if (chunk.has_usage()) turn.usage = chunk.usage();
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpc(status);
  history_.push_back(*user);
  v1::ChatMessage assistant;
  assistant.set_role(v1::ROLE_ASSISTANT);
  assistant.set_content(turn.text);
  history_.push_back(std::move(assistant));
  return turn;
}

}  // namespace ultramem::services
