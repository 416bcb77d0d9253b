// Implementation of compute_node/serving/chat_template.h.
#include "compute_node/serving/chat_template.h"

namespace ultramem {

absl::StatusOr<std::vector<int32_t>> ApplyChatTemplate(const ByteTokenizer& tokenizer,
                                                       const std::vector<ChatTurn>& turns) {
  if (turns.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  std::vector<int32_t> ids;
  if (tokenizer.bos()) ids.push_back(*tokenizer.bos());
  auto append = [&](const std::string& text) {
    for (int32_t id : tokenizer.Encode(text)) ids.push_back(id);
  };
  const auto sys = tokenizer.Special("<|system|>"), user = tokenizer.Special("<|user|>"),
             assistant = tokenizer.Special("<|assistant|>"), end = tokenizer.Special("<|end|>");
  if (sys && user && assistant && end) {
    for (const ChatTurn& t : turns) {
      ids.push_back(t.role == ChatRole::kSystem ? *sys : t.role == ChatRole::kUser ? *user : *assistant);
      append(t.content);
      ids.push_back(*end);
    }
    ids.push_back(*assistant);
    return ids;
  }
  for (size_t i = 0; i < turns.size(); ++i) {
    append(turns[i].content);
    const bool last = i + 1 == turns.size();
    if (turns[i].role != ChatRole::kUser && !last) append("\n\n");
    if (turns[i].role == ChatRole::kUser && !last) append("\n");
  }
  return ids;
}

}  // namespace ultramem
