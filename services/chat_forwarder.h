// One Chat stream through the gateway: a ServerWriteReactor toward the client and, per attempt, a
// ClientReadReactor toward a compute node. Chunks are relayed one at a time (the next backend read
// starts when the client's write completes, so a slow client slows its backend instead of
// buffering), cancellation flows both ways, and a backend that fails with UNAVAILABLE before its
// first chunk is replaced by another. Reactions never block.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>

#include "absl/status/status.h"
#include "ultramem/v1/chat.grpc.pb.h"

namespace ultramem::services {

class BackendPool;
class GatewayMetrics;

struct ForwarderEnv {
  BackendPool* pool = nullptr;        // outlives every call (the server drains first)
  GatewayMetrics* metrics = nullptr;  // idem
  int max_attempts = 3;
  const std::atomic<bool>* draining = nullptr;  // no retries once set
};

// Returns the reactor for one Chat. When `admission` is not OK (auth or validation failed) the
// call finishes at once with it; otherwise the request goes to the least-loaded healthy backend
// (UNAVAILABLE when there is none). The reactor deletes itself when the call is done.
grpc::ServerWriteReactor<ultramem::v1::ChatChunk>* ForwardChat(
    const ForwarderEnv& env, grpc::CallbackServerContext* context,
    const ultramem::v1::ChatRequest* request, const absl::Status& admission);

}  // namespace ultramem::services
