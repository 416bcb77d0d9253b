// The chat template of the byte-level tokenizer: a conversation to prompt tokens.
//
// When the config's tokenizer names role tokens <|system|>, <|user|>, <|assistant|> and <|end|>,
// each message is  <|role|> content <|end|>  and the prompt ends with <|assistant|>. Otherwise
// (a plain text model, like the default one) messages are plain text: a system message is
// followed by a blank line, an earlier assistant reply by a blank line, and the last user message
// is left for the model to continue. Either way the prompt starts with <|bos|> when the tokenizer
// has one, so that a single user message gives exactly what `ultramem-generate --prompt` runs.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compute_node/tokenizer.h"

namespace ultramem {

enum class ChatRole { kSystem, kUser, kAssistant };

struct ChatTurn {
  ChatRole role = ChatRole::kUser;
  std::string content;
};

// INVALID_ARGUMENT when there is no message.
absl::StatusOr<std::vector<int32_t>> ApplyChatTemplate(const ByteTokenizer& tokenizer,
                                                       const std::vector<ChatTurn>& turns);

}  // namespace ultramem
