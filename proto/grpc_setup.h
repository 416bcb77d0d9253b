// Process-wide gRPC server setup every UltraMem server shares: server reflection and the standard
// grpc.health.v1 service. Call before building the first grpc::ServerBuilder.
#pragma once

namespace ultramem {

// Enables the default health service (grpc.health.v1.Health; a server then answers SERVING for ""
// unless told otherwise through grpc::Server::GetHealthCheckService()) and registers the proto
// reflection plugin. Idempotent and thread safe.
void EnableStandardGrpcServices();

}  // namespace ultramem
