// Implementation of common/safetensors_writer.h.
#include "common/safetensors_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/absl_compat.h"
#include "nlohmann/json.hpp"

namespace ultramem {
namespace {

absl::Status ErrnoError(int err, std::string_view what, const std::string& path) {
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat(path, ": ", ToAbsl(what), ": ", std::strerror(err)));
}

template <typename T, typename Convert>
std::string ToBytes(const std::vector<T>& values, size_t size, Convert convert) {
  std::string out(values.size() * size, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    const auto v = convert(values[i]);
    static_assert(std::is_trivially_copyable_v<decltype(v)>);
    std::memcpy(out.data() + i * size, &v, size);  // little-endian host (see dtype.cc)
  }
  return out;
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot create temporary file", tmp);
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoError(err, "write failed", tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError(err, "fsync/close failed", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError(err, "rename failed", path);
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", t.name, "\": duplicate or reserved name"));
    }
    uint64_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor \"", t.name, "\": negative dimension"));
      }
      elements *= static_cast<uint64_t>(d);
    }
    if (elements * DTypeSize(t.dtype) != t.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor \"", t.name, "\": ", t.bytes.size(), " bytes for ", elements, " ",
          ToAbsl(DTypeName(t.dtype)), " elements"));
    }
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string contents;
  contents.reserve(8 + text.size() + offset);
  const uint64_t header_len = text.size();
  contents.append(reinterpret_cast<const char*>(&header_len), 8);  // little-endian host
  contents += text;
  for (const TensorToWrite& t : tensors) contents += t.bytes;
  return WriteFileAtomically(path, contents);
}

std::string F32Bytes(const std::vector<float>& values) {
  return ToBytes(values, 4, [](float v) { return v; });
}
std::string Bf16Bytes(const std::vector<float>& values) {
  return ToBytes(values, 2, [](float v) { return F32ToBf16(v); });
}
std::string F16Bytes(const std::vector<float>& values) {
  return ToBytes(values, 2, [](float v) { return F32ToF16(v); });
}
std::string I32Bytes(const std::vector<int32_t>& values) {
  return ToBytes(values, 4, [](int32_t v) { return v; });
}
std::string I64Bytes(const std::vector<int64_t>& values) {
  return ToBytes(values, 8, [](int64_t v) { return v; });
}

std::string FloatBytes(DType dtype, const std::vector<float>& values) {
  switch (dtype) {
    case DType::kF32: return F32Bytes(values);
    case DType::kBF16: return Bf16Bytes(values);
    case DType::kF16: return F16Bytes(values);
    default: return "";
  }
}

}  // namespace ultramem
