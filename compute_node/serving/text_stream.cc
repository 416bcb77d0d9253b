// Implementation of compute_node/serving/text_stream.h.
#include "compute_node/serving/text_stream.h"

#include <algorithm>

namespace ultramem {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

// Length of the UTF-8 sequence a lead byte announces; 0 for a byte that cannot lead.
int SequenceLength(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

bool ValidSequence(const std::string& s) {
  const unsigned char c0 = s[0];
  for (size_t i = 1; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) return false;
  }
  if (s.size() >= 2) {
    const unsigned char c1 = s[1];
    if (c0 == 0xE0 && c1 < 0xA0) return false;  // overlong
    if (c0 == 0xED && c1 > 0x9F) return false;  // surrogates
    if (c0 == 0xF0 && c1 < 0x90) return false;  // overlong
    if (c0 == 0xF4 && c1 > 0x8F) return false;  // beyond U+10FFFF
  }
  return true;
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string TextStream::Push(const std::string& bytes, bool* stopped) {
  *stopped = stopped_;
  if (stopped_) return "";
  // Decode into pending_, complete sequences only.
  for (char ch : bytes) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (!partial_.empty()) {
      if ((c & 0xC0) == 0x80) {
        partial_.push_back(ch);
        if (static_cast<int>(partial_.size()) == SequenceLength(partial_[0])) {
          pending_ += ValidSequence(partial_) ? partial_ : std::string(kReplacement);
          partial_.clear();
        } else if (!ValidSequence(partial_)) {
          pending_ += kReplacement;
          partial_.clear();
        }
        continue;
      }
      pending_ += kReplacement;  // the sequence broke off
      partial_.clear();
    }
    const int len = SequenceLength(c);
    if (len == 1) {
      pending_.push_back(ch);
    } else if (len == 0) {
      pending_ += kReplacement;
    } else {
      partial_.push_back(ch);
    }
  }
  // Cut at the first complete stop string.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    *stopped = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    partial_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string TextStream::Flush() {
  if (stopped_) return "";
  std::string out = pending_;
  if (!partial_.empty()) out += kReplacement;
  pending_.clear();
  partial_.clear();
  return out;
}

}  // namespace ultramem
