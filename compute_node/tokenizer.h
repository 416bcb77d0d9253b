// The byte-level tokenizer (MODEL.md §4): ids 0–255 are raw bytes, special tokens come from the
// config's "tokenizer" object, e.g. {"type": "bytes", "special_tokens": {"<|bos|>": 256, ...}}.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace ultramem {

class ByteTokenizer {
 public:
  // INVALID_ARGUMENT for a type other than "bytes" or a special id below 256 or >= V.
  static absl::StatusOr<ByteTokenizer> Create(const ModelConfig& config);

  // Raw bytes to ids; special-token text in `text` is NOT interpreted (it stays bytes).
  std::vector<int32_t> Encode(std::string_view text) const;
  // Ids to bytes; special tokens render as their names when render_special, else vanish.
  std::string Decode(const std::vector<int32_t>& ids, bool render_special = false) const;
  std::string DecodeOne(int32_t id, bool render_special = false) const;

  // The id of a special token, if the config names it.
  std::optional<int32_t> Special(std::string_view name) const;
  std::optional<int32_t> bos() const { return Special("<|bos|>"); }
  std::optional<int32_t> eos() const { return Special("<|eos|>"); }
  bool IsSpecial(int32_t id) const { return id >= 256; }

 private:
  std::map<std::string, int32_t, std::less<>> special_;
  std::map<int32_t, std::string> names_;
};

}  // namespace ultramem
