// ultramem-chat: talks to the gateway. With a PROMPT, one reply; without, a conversation read
// line by line from stdin (kept across turns; EOF, or an empty line at a terminal, ends it). Text goes to stdout as
// it streams; usage (tokens, time to first token) goes to stderr. Exits non-zero with the status
// message when a call fails.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/flags_util.h"
#include "services/chat_client.h"
#include "services/gateway_metrics.h"
#include "services/grpc_util.h"

ABSL_FLAG(std::string, endpoint, "localhost:7000", "gateway address (host:port, unix:path)");
ABSL_FLAG(std::string, token, "", "bearer token (default: env ULTRAMEM_AUTH_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the gateway's certificate (TLS); empty: plaintext");
ABSL_FLAG(std::string, model, "", "model name (default: the server's)");
ABSL_FLAG(std::string, system, "", "system message that opens the conversation");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0: greedy)");
ABSL_FLAG(double, top_p, 0.0, "nucleus sampling mass in (0, 1] (0: off)");
ABSL_FLAG(int32_t, top_k, 0, "sample among the k most likely tokens (0: no limit)");
ABSL_FLAG(int32_t, max_tokens, 0, "most tokens per reply (0: the server's default)");
ABSL_FLAG(std::string, seed, "", "sampling seed (unsigned integer; empty: random)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma separated");
ABSL_FLAG(int64_t, timeout_ms, 0, "deadline per reply in milliseconds (0: none)");

namespace v1 = ::ultramem::v1;

namespace {

const char* FinishName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

// One reply: streams it to stdout, usage to stderr. False (message printed) on failure.
bool Turn(ultramem::services::ChatSession& session, const std::string& text) {
  bool printed = false;
  auto turn = session.Send(text, [&printed](const std::string& delta) {
    std::fwrite(delta.data(), 1, delta.size(), stdout);
    std::fflush(stdout);
    printed = true;
  });
  if (!turn.ok()) {
    if (printed) std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s: %s\n",
                 ultramem::services::StatusCodeName(turn.status().code()).c_str(),
                 std::string(turn.status().message()).c_str());
    return false;
  }
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr,
               "[finish=%s prompt_tokens=%d completion_tokens=%d ttft=%.3fs (server %.3fs) "
               "total=%.3fs]\n",
               FinishName(turn->finish_reason), turn->usage.prompt_tokens(),
               turn->usage.completion_tokens(), turn->client_first_chunk_seconds,
               turn->usage.time_to_first_token_seconds(), turn->usage.total_seconds());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Chats with UltraMem Serve.\n  ultramem-chat [flags] \"PROMPT\"   one reply\n"
      "  ultramem-chat [flags]            a conversation, one line per turn");
  ultramem::NormalizeFlagNames(argc, argv);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);

  ultramem::services::ChatClientOptions options;
  options.endpoint = absl::GetFlag(FLAGS_endpoint);
  options.token = absl::GetFlag(FLAGS_token);
  if (options.token.empty()) {
    if (const char* env = std::getenv("ULTRAMEM_AUTH_TOKEN")) options.token = env;
  }
  if (const std::string ca = absl::GetFlag(FLAGS_tls_ca); !ca.empty()) {
    auto pem = ultramem::ReadFileOrEmpty(ca);
    if (!pem.ok()) {
      std::fprintf(stderr, "error: %s\n", pem.status().ToString().c_str());
      return 2;
    }
    options.tls_ca_pem = *pem;
  }
  options.model = absl::GetFlag(FLAGS_model);
  options.system_prompt = absl::GetFlag(FLAGS_system);
  options.timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  v1::SamplingParams& s = options.sampling;
  s.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  s.set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  s.set_top_k(absl::GetFlag(FLAGS_top_k));
  s.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) s.add_stop(stop);
  if (const std::string seed = absl::GetFlag(FLAGS_seed); !seed.empty()) {
    uint64_t value = 0;
    if (!absl::SimpleAtoi(seed, &value)) {
      std::fprintf(stderr, "error: --seed must be an unsigned integer, not \"%s\"\n", seed.c_str());
      return 2;
    }
    s.set_seed(value);
  }

  ultramem::services::ChatSession session(options);
  if (positional.size() > 1) {
    std::vector<std::string> words(positional.begin() + 1, positional.end());
    return Turn(session, absl::StrJoin(words, " ")) ? 0 : 1;
  }
  const bool tty = isatty(STDIN_FILENO);
  bool all_ok = true;
  std::string line;
  for (;;) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    const std::string text(absl::StripAsciiWhitespace(line));
    if (text.empty()) {
      if (tty) break;
      continue;
    }
    all_ok = Turn(session, text) && all_ok;
  }
  return all_ok ? 0 : 1;
}
