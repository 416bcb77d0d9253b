// ultramem.v1.ChatService on a compute node: validates a request, applies the chat template,
// queues it on the continuous-batching scheduler and streams the tokens back as they come.
#pragma once

#include <memory>
#include <string>

#include "compute_node/model_runtime.h"
#include "compute_node/serving/scheduler.h"
#include "compute_node/serving/serving_metrics.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem {

struct ChatServiceOptions {
  std::string model_name;       // what ListModels reports and Chat.model must name (or leave empty)
  int default_max_tokens = 256; // when a request leaves max_tokens at 0
  int max_running = 32;         // for Load and the KV usage ratio
  int max_waiting = 256;
};

class ChatServiceImpl : public v1::ChatService::CallbackService {
 public:
  // runtime, scheduler and metrics must outlive the service.
  ChatServiceImpl(const ModelRuntime* runtime, Scheduler* scheduler, ServingMetrics* metrics,
                  ChatServiceOptions options);

  grpc::ServerWriteReactor<v1::ChatChunk>* Chat(grpc::CallbackServerContext* context,
                                                const v1::ChatRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* context, const v1::LoadRequest* request,
                                 v1::LoadResponse* response) override;

  // Turns a ChatRequest into a scheduler request (callbacks unset). INVALID_ARGUMENT / NOT_FOUND
  // with a message a person can act on. Exposed for tests.
  absl::StatusOr<GenerationRequest> Prepare(const v1::ChatRequest& request) const;

 private:
  const ModelRuntime* runtime_;
  Scheduler* scheduler_;
  ServingMetrics* metrics_;
  ChatServiceOptions options_;
};

}  // namespace ultramem
