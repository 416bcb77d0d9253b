// Reading small files (certificates, configs) whole.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace ultramem {

// The file's bytes; "" for an empty path; NotFound naming the path when it cannot be opened,
// DataLoss when reading it fails.
inline absl::StatusOr<std::string> ReadFileOrEmpty(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

}  // namespace ultramem
