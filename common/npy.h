// Writing and reading NumPy .npy files (version 1.0, little-endian, C order) for float32 and int64
// arrays: how command-line tools hand tensors to tests and scripts.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ultramem {

namespace npy_internal {
inline absl::Status Write(const std::string& path, const char* descr,
                          const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (",
                                    dims, "), }");
  // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string prefix("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  prefix.push_back(static_cast<char>(len & 0xff));
  prefix.push_back(static_cast<char>(len >> 8));
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  bool ok = std::fwrite(prefix.data(), 1, prefix.size(), f) == prefix.size() &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            (nbytes == 0 || std::fwrite(data, 1, nbytes, f) == nbytes);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat("short write to ", path));
  }
  return absl::OkStatus();
}
}  // namespace npy_internal

inline absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                                const float* data) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return npy_internal::Write(path, "<f4", shape, data, n * sizeof(float));
}

inline absl::Status WriteNpyI64(const std::string& path, const std::vector<int64_t>& shape,
                                const int64_t* data) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return npy_internal::Write(path, "<i8", shape, data, n * sizeof(int64_t));
}

}  // namespace ultramem
