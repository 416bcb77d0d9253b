// main() of a command-line tool whose work is one absl::Status-returning function: flag names may
// be spelled with dashes (common/flags_util.h), flags are parsed, and a failure is printed as
// "<program>: <status>" with exit code 1.
#pragma once

#include <cstdio>

#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "common/flags_util.h"

namespace ultramem {

inline int RunTool(int argc, char** argv, const char* program, absl::Status (*run)()) {
  NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = run();
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace ultramem
