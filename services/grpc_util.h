// Small gRPC helpers the gateway, the chat client and their tests share: credentials from PEM
// text, reading PEM/token files, the absl↔gRPC status conversion, and a grpc.health.v1 Check
// client that needs no generated health stubs (the message is one string field and one enum).
#pragma once

#include "proto/grpc_setup.h"

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ultramem::services {

// TLS credentials: MakeServerCredentials / MakeChannelCredentials in proto/grpc_setup.h.


inline grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}
inline absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// grpc.health.v1.Health/Check of `service` ("" is the whole server). Calls `done` once, on a gRPC
// thread, with true for SERVING, false for any other answer, or the RPC's error. Non-blocking.
void CheckHealthAsync(const std::shared_ptr<grpc::Channel>& channel, const std::string& service, absl::Duration timeout,
                      std::function<void(absl::StatusOr<bool>)> done);
// Blocking form of CheckHealthAsync.
absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                                 absl::Duration timeout);

}  // namespace ultramem::services
