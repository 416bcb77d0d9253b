// Implementation of services/request_checks.h.
#include "services/request_checks.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ultramem::services {

namespace v1 = ::ultramem::v1;

absl::Status ValidateChatRequest(const v1::ChatRequest& request) {
  if (request.messages().empty()) {
    return absl::InvalidArgumentError(
        "messages is empty: send at least one message, e.g. {role: ROLE_USER, content: \"Hi\"}");
  }
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::Role role = request.messages(i).role();
    if (role == v1::ROLE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role is not set: use ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"));
    }
    if (!v1::Role_IsValid(role)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role has the unknown value ", static_cast<int>(role),
          ": use ROLE_SYSTEM (1), ROLE_USER (2) or ROLE_ASSISTANT (3)"));
    }
  }
  const int last = request.messages_size() - 1;
  if (request.messages(last).content().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "messages[", last, "].content is empty: the last message must say something to reply to"));
  }
  const v1::SamplingParams& s = request.sampling();
  if (s.max_tokens() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.max_tokens is ", s.max_tokens(),
        ": use a positive number, or 0 for the server's default"));
  }
  if (!std::isfinite(s.temperature()) || s.temperature() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.temperature is ", s.temperature(),
        ": use a finite value >= 0 (0 is greedy, about 0.7 is usual for chat)"));
  }
  if (!(s.top_p() >= 0 && s.top_p() <= 1)) {  // also refuses NaN
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.top_p is ", s.top_p(), ": use a value in (0, 1], or 0 for no nucleus cut"));
  }
  if (s.top_k() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.top_k is ", s.top_k(), ": use a positive number, or 0 for no limit"));
  }
  return absl::OkStatus();
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walks the longer string whatever happens, so timing reveals lengths only.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

absl::Status CheckBearerToken(const std::string* header, const std::string& token) {
  if (header == nullptr) {
    return absl::UnauthenticatedError(
        "missing credentials: send the metadata \"authorization: Bearer <token>\"");
  }
  constexpr absl::string_view kScheme = "bearer ";
  absl::string_view value(*header);
  if (value.size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "the authorization metadata must read \"Bearer <token>\"");
  }
  value = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  if (!ConstantTimeEquals(value, token)) {
    return absl::UnauthenticatedError("invalid token: check the token the gateway was given");
  }
  return absl::OkStatus();
}

}  // namespace ultramem::services
