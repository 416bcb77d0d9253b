// A minimal HTTP endpoint serving one Prometheus registry at /metrics.
//
// Why not prometheus::Exposer: it runs civetweb, whose threads get a 100 KiB stack, and a process
// that links cuBLAS carries more static TLS than that, so civetweb cannot start a thread in a CUDA
// build of the compute node ("Cannot create threads"). This server's one thread has the default
// stack. Scrapes are served one at a time: Prometheus scrapes each target every few seconds.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace prometheus {
class Registry;
}

namespace ultramem {

class MetricsHttpServer {
 public:
  // Listens on "host:port" (port 0 picks one). UNAVAILABLE naming the address when it can't bind.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();  // stops and joins

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Loop();
  void Serve(int fd);

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace ultramem
