// Command-line spelling: users type --max-tokens, Abseil flags are named max_tokens. Rewrites
// dashes in flag names (not values) to underscores before absl::ParseCommandLine.
#pragma once

#include <cstring>

namespace ultramem {

inline void NormalizeFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* a = argv[i];
    if (std::strcmp(a, "--") == 0) break;
    if (a[0] != '-' || a[1] != '-') continue;
    for (char* p = a + 2; *p != '\0' && *p != '='; ++p) {
      if (*p == '-') *p = '_';
    }
  }
}

}  // namespace ultramem
