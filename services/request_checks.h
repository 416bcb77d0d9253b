// What the gateway checks before forwarding: the bearer token and the ChatRequest's fields. Each
// refusal carries a message that tells the caller what to change.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "ultramem/v1/chat.pb.h"

namespace ultramem::services {

// InvalidArgument for: no messages, a message whose role is ROLE_UNSPECIFIED or unknown, an empty
// last message, negative max_tokens, a temperature below 0 or not finite, top_p outside [0, 1],
// negative top_k. OK otherwise (the compute node checks what needs the model, e.g. the context).
absl::Status ValidateChatRequest(const ultramem::v1::ChatRequest& request);

// Checks the value of an "authorization" metadata entry against `token` ("Bearer <token>", the
// scheme case-insensitive). Unauthenticated when it is missing (`header` null) or wrong. The
// comparison takes the same time whatever the mismatch position.
absl::Status CheckBearerToken(const std::string* header, const std::string& token);

// Equality of two strings in time that depends only on their lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace ultramem::services
