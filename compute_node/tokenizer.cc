// Implementation of compute_node/tokenizer.h.
#include "compute_node/tokenizer.h"

#include "absl/strings/str_cat.h"

namespace ultramem {

absl::StatusOr<ByteTokenizer> ByteTokenizer::Create(const ModelConfig& config) {
  if (config.tokenizer.type != "bytes") {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer type '", config.tokenizer.type, "' is not supported (only 'bytes')"));
  }
  if (config.vocab_size < 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("a byte tokenizer needs vocab_size >= 256, got ", config.vocab_size));
  }
  ByteTokenizer tok;
  for (const auto& [name, id] : config.tokenizer.special_tokens) {
    if (id < 256 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("special token ", name, " has id ", id,
                                                     " outside [256, ", config.vocab_size, ")"));
    }
    tok.special_[name] = id;
    tok.names_[id] = name;
  }
  return tok;
}

std::vector<int32_t> ByteTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::DecodeOne(int32_t id, bool render_special) const {
  if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
  if (!render_special) return "";
  auto it = names_.find(id);
  return it != names_.end() ? it->second : absl::StrCat("<|", id, "|>");
}

std::string ByteTokenizer::Decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) out += DecodeOne(id, render_special);
  return out;
}

std::optional<int32_t> ByteTokenizer::Special(std::string_view name) const {
  auto it = special_.find(name);
  if (it == special_.end()) return std::nullopt;
  return it->second;
}

}  // namespace ultramem
