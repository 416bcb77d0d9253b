// Process-wide gRPC server setup every UltraMem server shares: server reflection and the standard
// grpc.health.v1 service. Call before building the first grpc::ServerBuilder.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

namespace ultramem {

// Enables the default health service (grpc.health.v1.Health; a server then answers SERVING for ""
// unless told otherwise through grpc::Server::GetHealthCheckService()) and registers the proto
// reflection plugin. Idempotent and thread safe.
void EnableStandardGrpcServices();

// TLS server credentials from a PEM chain and key; plaintext when both are empty. With
// `client_ca_pem`, clients must present a certificate it signs (mutual TLS).
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const std::string& cert_pem,
                                                               const std::string& key_pem,
                                                               const std::string& client_ca_pem = "");
// TLS channel credentials trusting `ca_pem` (optionally presenting a client certificate);
// plaintext when `ca_pem` is empty.
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const std::string& ca_pem,
                                                                 const std::string& cert_pem = "",
                                                                 const std::string& key_pem = "");

}  // namespace ultramem
