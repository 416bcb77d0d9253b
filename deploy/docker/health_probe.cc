// ultramem-health-probe: asks a server's grpc.health.v1 service whether it is SERVING.
//   ultramem-health-probe [--timeout-ms=2000] ADDRESS [SERVICE]
// Exit status: 0 SERVING, 1 anything else (NOT_SERVING, UNKNOWN, unreachable, deadline).
// Used by the docker-compose healthchecks (Kubernetes uses its native `grpc:` probes instead).
// Built by the Dockerfiles from /usr/share/grpc-proto/grpc/health/v1/health.proto (Debian grpc-proto).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"

int main(int argc, char** argv) {
  int timeout_ms = 2000;
  int arg = 1;
  if (arg < argc && std::strncmp(argv[arg], "--timeout-ms=", 13) == 0) timeout_ms = std::atoi(argv[arg++] + 13);
  if (arg >= argc || argc - arg > 2) {
    std::fprintf(stderr, "usage: %s [--timeout-ms=N] ADDRESS [SERVICE]\n", argv[0]);
    return 2;
  }
  const std::string address = argv[arg];
  const std::string service = arg + 1 < argc ? argv[arg + 1] : "";
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "%s: health check failed: %d %s\n", address.c_str(), status.error_code(),
                 status.error_message().c_str());
    return 1;
  }
  const bool serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  std::printf("%s: %s\n", address.c_str(),
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return serving ? 0 : 1;
}
