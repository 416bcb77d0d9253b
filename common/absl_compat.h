// Bridges std::string_view and absl::string_view. Our Abseil (20220623, Debian build) is configured
// with ABSL_OPTION_USE_STD_STRING_VIEW=0, so absl::string_view is a distinct type: absl::StrCat,
// absl::Status constructors and absl hash-map lookups do not accept a std::string_view directly.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace ultramem {

inline absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace ultramem
