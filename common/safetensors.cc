// Implementation of common/safetensors.h: a defensive header parser (any bytes in, a status out)
// and the mmap-backed file.
#include "common/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/absl_compat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace ultramem {
namespace {

using Json = nlohmann::json;

// The reference implementation (huggingface/safetensors) refuses headers above 100 MB; so do we,
// so that a corrupt length cannot make us parse gigabytes of data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// Untrusted text made safe for a one-line message: printable ASCII kept, the rest escaped,
// long strings cut.
std::string Printable(std::string_view s, size_t max_len = 120) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

absl::Status FileError(std::string_view file_name, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(ToAbsl(file_name), ": ", ToAbsl(what)));
}

absl::Status TensorError(std::string_view file_name, std::string_view tensor,
                         std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(file_name), ": tensor \"", Printable(tensor), "\": ", ToAbsl(what)));
}

// A SAX consumer that accepts everything and records the first syntax error; used only to explain
// why the DOM parse failed.
class ErrorRecorder : public nlohmann::json_sax<Json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception&) override {
    position_ = position;
    last_token_ = last_token;
    return false;
  }
  size_t position() const { return position_; }
  const std::string& last_token() const { return last_token_; }

 private:
  size_t position_ = 0;
  std::string last_token_;
};

// A JSON value that must be a non-negative integer representable as int64.
bool AsCount(const Json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;  // negatives parse as number_integer, 2.0 as float
  const uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = u;
  return true;
}

absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const Json& v,
                                       uint64_t data_size, std::string_view file_name) {
  if (!v.is_object()) return TensorError(file_name, name, "entry is not a JSON object");
  TensorEntry entry;
  entry.name = name;

  auto dtype_it = v.find("dtype");
  if (dtype_it == v.end() || !dtype_it->is_string()) {
    return TensorError(file_name, name, "missing or non-string \"dtype\"");
  }
  absl::StatusOr<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return TensorError(file_name, name, ToStd(dtype.status().message()));
  entry.dtype = *dtype;

  auto shape_it = v.find("shape");
  if (shape_it == v.end() || !shape_it->is_array()) {
    return TensorError(file_name, name, "missing or non-array \"shape\"");
  }
  uint64_t elements = 1;
  for (const Json& dim : *shape_it) {
    uint64_t d;
    if (!AsCount(dim, &d)) {
      return TensorError(file_name, name, "shape holds a value that is not a non-negative integer");
    }
    if (__builtin_mul_overflow(elements, d, &elements) ||
        elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(file_name, name, "element count overflows");
    }
    entry.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(elements, DTypeSize(entry.dtype), &bytes)) {
    return TensorError(file_name, name, "byte size overflows");
  }

  auto off_it = v.find("data_offsets");
  if (off_it == v.end() || !off_it->is_array() || off_it->size() != 2 ||
      !AsCount((*off_it)[0], &entry.begin) || !AsCount((*off_it)[1], &entry.end)) {
    return TensorError(file_name, name,
                       "\"data_offsets\" is not a pair of non-negative integers");
  }
  if (entry.begin > entry.end) {
    return TensorError(file_name, name,
                       absl::StrCat("data_offsets [", entry.begin, ", ", entry.end, "] are reversed"));
  }
  if (entry.end > data_size) {
    return TensorError(file_name, name,
                       absl::StrCat("data_offsets [", entry.begin, ", ", entry.end,
                                    "] point outside the file (data section holds ", data_size,
                                    " bytes; file truncated?)"));
  }
  if (entry.end - entry.begin != bytes) {
    return TensorError(file_name, name,
                       absl::StrCat("data_offsets cover ", entry.end - entry.begin, " bytes but ",
                                    ToAbsl(DTypeName(entry.dtype)), " shape of ", elements,
                                    " elements needs ", bytes));
  }
  return entry;
}

}  // namespace

int64_t TensorEntry::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow: checked when the header was parsed
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_bytes,
                                                         uint64_t file_size,
                                                         std::string_view file_name) {
  if (file_size < 8 || file_bytes.size() < 8) {
    return FileError(file_name, absl::StrCat("file is ", file_size,
                                             " bytes, too short for the 8-byte header length"));
  }
  if (file_bytes.size() > file_size) {
    return FileError(file_name, absl::StrCat(file_bytes.size(), " bytes given for a file of ",
                                             file_size, " bytes"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_bytes.data(), sizeof(header_len));  // little-endian host
  if (header_len > file_size - 8) {
    return FileError(file_name, absl::StrCat("header length ", header_len,
                                             " points past the end of the file (", file_size,
                                             " bytes; truncated or not safetensors?)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return FileError(file_name, absl::StrCat("header length ", header_len, " exceeds the ",
                                             kMaxHeaderBytes, "-byte limit"));
  }
  if (file_bytes.size() - 8 < header_len) {
    return FileError(file_name, absl::StrCat("only ", file_bytes.size(), " bytes given, header needs ",
                                             8 + header_len));
  }

  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  const uint64_t data_size = file_size - header.data_start;
  const std::string_view text = file_bytes.substr(8, header_len);

  // Exceptions off for parsing; every later access is type-checked first.
  const Json root = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    ErrorRecorder recorder;
    Json::sax_parse(text.begin(), text.end(), &recorder);
    return FileError(file_name, absl::StrCat("header is not valid JSON (syntax error at byte ",
                                             recorder.position(), " of the header near \"",
                                             Printable(recorder.last_token(), 40), "\")"));
  }
  if (!root.is_object()) return FileError(file_name, "header JSON is not an object");

  std::vector<const TensorEntry*> by_offset;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const Json& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) return FileError(file_name, "\"__metadata__\" is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) {
          return FileError(file_name, absl::StrCat("\"__metadata__\" value for \"",
                                                   Printable(m.key()), "\" is not a string"));
        }
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    UM_ASSIGN_OR_RETURN(TensorEntry entry, ParseEntry(name, value, data_size, file_name));
    auto [slot, inserted] = header.tensors.emplace(name, std::move(entry));
    if (!inserted) return TensorError(file_name, name, "appears twice");
    by_offset.push_back(&slot->second);
  }

  // Two tensors may not share bytes (empty tensors own none and are ignored).
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* e : by_offset) {
    if (e->begin == e->end) continue;
    if (previous != nullptr && e->begin < previous->end) {
      return TensorError(file_name, e->name,
                         absl::StrCat("byte range [", e->begin, ", ", e->end,
                                      ") overlaps tensor \"", Printable(previous->name), "\" [",
                                      previous->begin, ", ", previous->end, ")"));
    }
    if (previous == nullptr || e->end > previous->end) previous = e;
  }
  return header;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat(path, ": cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return ParseSafetensorsHeader("", size, path).status();  // the uniform "too short" message
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::Status(absl::ErrnoToStatusCode(mmap_errno),
                        absl::StrCat(path, ": mmap failed: ", std::strerror(mmap_errno)));
  }
  file->map_ = map;
  file->map_size_ = size;
  UM_ASSIGN_OR_RETURN(
      file->header_,
      ParseSafetensorsHeader(std::string_view(static_cast<const char*>(map), size), size, path));
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorEntry* SafetensorsFile::Find(std::string_view name) const {
  auto it = header_.tensors.find(std::string(name));
  return it == header_.tensors.end() ? nullptr : &it->second;
}

TensorView SafetensorsFile::View(const TensorEntry& entry) const {
  TensorView view;
  view.entry = &entry;
  view.data = static_cast<const uint8_t*>(map_) + header_.data_start + entry.begin;
  view.file = path_;
  return view;
}

}  // namespace ultramem
