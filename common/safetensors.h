// Reading safetensors files: header parsing (pure, fuzzable) and mmap-backed file access.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data; offsets are relative to the first byte after the header.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace ultramem {

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset from the start of the data section
  uint64_t end = 0;    // one past the last byte

  int64_t NumElements() const;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;                   // 8 + header length: file offset of the data section
  std::map<std::string, TensorEntry> tensors;  // "__metadata__" is not a tensor and is skipped
  std::map<std::string, std::string> metadata;
};

// Parses the first bytes of a safetensors file. `file_bytes` may hold the whole file or just
// 8 + header length bytes; `file_size` is the size of the whole file. Refuses (InvalidArgument,
// messages naming `file_name` and, where one is at fault, the tensor): a file shorter than 8 bytes,
// a header length beyond the file, JSON that does not parse or is not an object, an unknown dtype,
// a negative or non-integer shape, offsets that are reversed, point outside the file or disagree
// with dtype size × element count, two tensors whose byte ranges overlap, and (as the reference
// implementation does) a header above 100 MB. Unknown keys inside an entry are ignored.
// Never crashes or reads out of bounds on any input (a libFuzzer target covers it).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_bytes,
                                                         uint64_t file_size,
                                                         std::string_view file_name);

// A tensor's bytes inside a mapped file; valid while the owning SafetensorsFile lives.
struct TensorView {
  const TensorEntry* entry = nullptr;
  const uint8_t* data = nullptr;  // not necessarily aligned
  std::string file;               // path of the file holding it, for messages

  int64_t NumElements() const { return entry->NumElements(); }
  size_t NumBytes() const { return entry->end - entry->begin; }
};

// One safetensors file, memory-mapped read-only. Thread safe after Open.
class SafetensorsFile {
 public:
  // NotFound when the file is missing; InvalidArgument when its header is malformed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // nullptr when the file has no such tensor.
  const TensorEntry* Find(std::string_view name) const;
  TensorView View(const TensorEntry& entry) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
};

}  // namespace ultramem
