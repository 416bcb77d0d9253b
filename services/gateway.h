// The chat gateway: the public ultramem.v1.ChatService endpoint. It checks the bearer token and
// the request, forwards each Chat to the least-loaded healthy compute node (streaming the chunks
// through, deadline and cancellation propagated), serves health, reflection and Prometheus metrics,
// and drains on Shutdown.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/address_resolver.h"

namespace ultramem::services {

struct GatewayOptions {
  // Compute nodes serving ultramem.v1.ChatService. At least one. A "host:port" name is resolved
  // every resolve_interval_ms into one backend per address (a Kubernetes headless Service: one per
  // ready pod); literal "ip:port" and "unix:/path" are one backend each.
  std::vector<std::string> backends;
  // gRPC listening address; port 0 picks a free one (see Gateway::address()).
  std::string listen_address = "127.0.0.1:7000";
  // Prometheus /metrics "host:port" (port 0 picks one); empty disables the endpoint.
  std::string metrics_address = "127.0.0.1:9000";
  // Bearer token clients must send ("authorization: Bearer <token>"); empty: no check.
  std::string auth_token;
  // PEM server certificate chain and key for clients; both empty: plaintext.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // PEM roots that sign the compute nodes' certificates; empty: plaintext to compute nodes. The
  // optional client certificate and key make it mutual TLS.
  std::string backend_tls_ca_pem;
  std::string backend_tls_cert_pem;
  std::string backend_tls_key_pem;
  // How often each backend's health and Load are polled, and how long one poll may take. Shorter
  // polls route on fresher load at the cost of two small RPCs per backend per interval.
  int64_t poll_interval_ms = 200;
  int64_t poll_timeout_ms = 1000;
  // How often names among `backends` are resolved again: shorter finds new pods sooner, for a DNS
  // query per name per interval. A failed resolution keeps the last known addresses.
  int64_t resolve_interval_ms = 5000;
  // Resolves one name; empty: getaddrinfo (ResolveWithGetaddrinfo). For tests.
  AddressResolver resolver;
  // Backends one Chat may try: a retry happens only when a backend answered UNAVAILABLE before
  // sending any chunk (so no output is ever duplicated).
  int max_attempts = 3;
  // How long Shutdown lets in-flight streams finish before cancelling them.
  int64_t drain_timeout_ms = 30000;
  // Largest request or reply accepted.
  int max_message_bytes = 16 << 20;
};

class Gateway {
 public:
  // Resolves the backend names once (blocking for as long as DNS takes; a name that does not
  // resolve yet is retried every resolve_interval_ms, it is no error), binds the gRPC and metrics
  // ports and starts polling the backends. Health answers NOT_SERVING until a backend is healthy. InvalidArgument for options that make no sense (no backend, half
  // a TLS pair); Unavailable when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Gateway>> Start(const GatewayOptions& options);
  // Shuts down if still running.
  ~Gateway();

  // Blocks until at least `count` backends are healthy (true), the timeout passes or Shutdown
  // begins (false). Thread safe.
  bool WaitForHealthyBackends(int count, absl::Duration timeout);
  // Health NOT_SERVING, stops accepting calls, lets in-flight streams finish (up to
  // drain_timeout_ms, then cancels them and their backend calls), stops polling and the metrics
  // endpoint. Idempotent; thread safe.
  void Shutdown();

  // The bound gRPC address, port resolved ("127.0.0.1:41234", "unix:/tmp/s").
  const std::string& address() const;
  // The bound metrics port, or 0 when disabled.
  int metrics_port() const;
  // Backends healthy at the last poll.
  int healthy_backends() const;
  // Backends known now (fixed addresses and those their names resolved to).
  int known_backends() const;

  class Impl;

 private:
  explicit Gateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ultramem::services
