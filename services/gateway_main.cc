// ultramem-gateway: the public chat endpoint in front of the compute nodes, until SIGTERM (drains,
// exits 0). Prints "LISTENING grpc=... metrics=PORT" once bound and "SERVING backends=H/N" once a
// backend is healthy, on stdout for whoever started it.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/flags_util.h"
#include "common/signals.h"
#include "common/log.h"
#include "services/gateway.h"
#include "services/grpc_util.h"

ABSL_FLAG(std::string, backends, "127.0.0.1:7100",
          "compute nodes, comma separated (host:port, unix:path); a name stands for every address "
          "it resolves to (a headless Service: every pod), re-resolved every --resolve-interval-ms");
ABSL_FLAG(std::string, listen, "0.0.0.0:7000", "gRPC address for clients (host:port, unix:path)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9000", "Prometheus host:port; empty disables");
ABSL_FLAG(std::string, auth_token_file, "",
          "file holding the bearer token clients must send (env ULTRAMEM_AUTH_TOKEN also works)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain for clients (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls-cert");
ABSL_FLAG(std::string, backend_tls_ca, "", "PEM CA of the compute nodes' certificates (TLS to them)");
ABSL_FLAG(std::string, backend_tls_cert, "", "PEM client certificate for mutual TLS to compute nodes");
ABSL_FLAG(std::string, backend_tls_key, "", "PEM key of --backend-tls-cert");
ABSL_FLAG(int64_t, poll_interval_ms, 200, "how often backends' health and load are polled");
ABSL_FLAG(int64_t, resolve_interval_ms, 5000, "how often backend names are resolved again");
ABSL_FLAG(int64_t, drain_timeout_ms, 30000, "how long SIGTERM lets in-flight streams finish");

namespace {

// The file's text (whitespace trimmed when `trim`), or exits with a message.
std::string ReadOrDie(const std::string& path, const char* what, bool trim = false) {
  if (path.empty()) return "";
  auto text = ultramem::ReadFileOrEmpty(path);
  if (!text.ok()) {
    UM_LOG_ERROR("cannot read the ", what, ": ", text.status().ToString());
    std::exit(2);
  }
  return trim ? std::string(absl::StripAsciiWhitespace(*text)) : *text;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The UltraMem chat gateway: forwards ultramem.v1.ChatService to compute nodes.");
  ultramem::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const sigset_t signals = ultramem::BlockSignals({SIGTERM, SIGINT});

  ultramem::services::GatewayOptions options;
  options.backends = absl::StrSplit(absl::GetFlag(FLAGS_backends), ',', absl::SkipEmpty());
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  options.auth_token = ReadOrDie(absl::GetFlag(FLAGS_auth_token_file), "auth token file", true);
  if (options.auth_token.empty()) {
    if (const char* env = std::getenv("ULTRAMEM_AUTH_TOKEN")) {
      options.auth_token = std::string(absl::StripAsciiWhitespace(env));
    }
  }
  options.tls_cert_pem = ReadOrDie(absl::GetFlag(FLAGS_tls_cert), "TLS certificate");
  options.tls_key_pem = ReadOrDie(absl::GetFlag(FLAGS_tls_key), "TLS key");
  options.backend_tls_ca_pem = ReadOrDie(absl::GetFlag(FLAGS_backend_tls_ca), "backend CA");
  options.backend_tls_cert_pem = ReadOrDie(absl::GetFlag(FLAGS_backend_tls_cert), "backend client certificate");
  options.backend_tls_key_pem = ReadOrDie(absl::GetFlag(FLAGS_backend_tls_key), "backend client key");
  options.poll_interval_ms = absl::GetFlag(FLAGS_poll_interval_ms);
  options.resolve_interval_ms = absl::GetFlag(FLAGS_resolve_interval_ms);
  options.drain_timeout_ms = absl::GetFlag(FLAGS_drain_timeout_ms);

  auto gateway = ultramem::services::Gateway::Start(options);
  if (!gateway.ok()) {
    UM_LOG_ERROR("cannot start: ", gateway.status().ToString());
    return 1;
  }
  std::printf("LISTENING grpc=%s metrics=%d\n", (*gateway)->address().c_str(),
              (*gateway)->metrics_port());
  std::fflush(stdout);
  // SERVING once a backend is healthy; gives up quietly when shutdown starts first.
  std::thread announcer([g = gateway->get()] {
    if (g->WaitForHealthyBackends(1, absl::InfiniteDuration())) {
      std::printf("SERVING backends=%d/%d\n", g->healthy_backends(), g->known_backends());
      std::fflush(stdout);
    }
  });

  const int signal = ultramem::WaitForSignal(signals);
  UM_LOG_INFO("signal ", signal, ": draining");
  (*gateway)->Shutdown();
  announcer.join();
  return 0;
}
