// The memory server: the ultramem.v1.MemoryService (gRPC callback API) over a value store, with
// health, reflection, Prometheus metrics, graceful drain and switching store versions in place.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory_server/request_decoder.h"
#include "memory_server/value_store.h"

namespace ultramem::memory {

struct MemoryServerOptions {
  // gRPC listening addresses: "host:port" (port 0 picks a free one) or "unix:/path/to/socket".
  // Same-host clients should prefer a unix: socket (a third of loopback TCP's round trip).
  std::vector<std::string> listen_addresses = {"127.0.0.1:7070"};
  // Prometheus /metrics "host:port" (port 0 picks one); empty disables the endpoint.
  std::string metrics_address = "127.0.0.1:9470";
  std::string store_dir;
  std::string version;  // the version to serve; empty follows CURRENT
  ValueStoreOptions store;
  LookupLimits limits;
  // Lookups being served at once; more get RESOURCE_EXHAUSTED at once instead of queueing
  // behind cold reads (a client should try another replica).
  int max_in_flight = 4096;
  // Threads serving lookups that miss the hot tier (they block on RocksDB). Lookups that hit only
  // the hot tier run inline on gRPC's threads. More threads overlap more disk reads.
  int cold_threads = 8;
  // How long Shutdown waits for in-flight calls before cancelling them.
  int64_t drain_timeout_ms = 30000;
  // How often CURRENT is checked for a new version (0: only on Reload(), e.g. from SIGHUP). A new
  // version is opened and preloaded beside the old one, then swapped in: no lookup fails (the
  // switch needs RAM, or GPU memory with --device=cuda, for both hot tiers until the old
  // version's last lookup ends).
  int64_t current_poll_ms = 1000;
  // Largest request or reply accepted.
  int max_message_bytes = 64 << 20;
  // TLS (PEM contents). With a certificate and key the server speaks TLS only; with a client CA
  // as well it requires and verifies client certificates (mutual TLS from compute nodes).
  std::string tls_cert_pem, tls_key_pem, tls_client_ca_pem;
};

class MemoryServer {
 public:
  // Binds the gRPC and metrics ports and starts serving health (NOT_SERVING), Info, Ping and
  // reflection; Lookup answers UNAVAILABLE until Load succeeds. InvalidArgument for options that
  // make no sense; Unavailable when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MemoryServer>> Start(const MemoryServerOptions& options);
  // Shuts down if still running.
  ~MemoryServer();

  // Opens the store (preloading the hot tier when the shard fits) and turns health to SERVING.
  // The store's errors as ValueStore::Open returns them.
  absl::Status Load();
  // Switches to the version CURRENT names if it differs from the one served (no-op when
  // options.version pins one). The old version serves until the new one is ready; in-flight
  // lookups finish on the store they started on. FailedPrecondition when the new version's shape
  // (blocks, dims) differs from the old one; it is then not served.
  absl::Status Reload();
  // Health NOT_SERVING, stops accepting calls, waits for in-flight ones (up to drain_timeout_ms),
  // stops the threads and the metrics endpoint. Idempotent; thread safe.
  void Shutdown();

  // The bound gRPC addresses, ports resolved ("127.0.0.1:41234", "unix:/tmp/s").
  const std::vector<std::string>& addresses() const;
  // The bound metrics port, or 0 when disabled.
  int metrics_port() const;
  // The version being served ("" before Load).
  std::string version() const;

  class Impl;

 private:
  explicit MemoryServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ultramem::memory
