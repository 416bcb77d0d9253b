// libFuzzer entry point over ParseSafetensorsHeader: any bytes, taken as a whole safetensors file.
// Beyond "no crash, no out-of-bounds read" (ASan), it checks the parser's promises on every header
// it accepts and aborts when one is broken. Built as a fuzzer with -DULTRAMEM_FUZZ=ON (clang) and,
// in every build, into safetensors_header_fuzz_replay_test.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "common/safetensors.h"

namespace {

constexpr char kName[] = "fuzz.safetensors";

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "safetensors_header_fuzz: broken promise: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ultramem::ParseSafetensorsHeader;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto header = ParseSafetensorsHeader(bytes, size, kName);
  if (!header.ok()) {
    Require(header.status().code() == absl::StatusCode::kInvalidArgument, "error is InvalidArgument");
    Require(std::string(header.status().message()).find(kName) != std::string::npos,
            "error names the file");
    return 0;
  }
  Require(header->data_start >= 8 && header->data_start <= size, "data_start inside the file");
  const uint64_t data_size = size - header->data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, e] : header->tensors) {
    Require(e.name == name, "entry named by its key");
    Require(e.begin <= e.end && e.end <= data_size, "range inside the data section");
    Require(static_cast<uint64_t>(e.NumElements()) * ultramem::DTypeSize(e.dtype) == e.end - e.begin,
            "byte size = elements x dtype size");
    for (int64_t d : e.shape) Require(d >= 0, "non-negative dims");
    if (e.begin < e.end) ranges.emplace_back(e.begin, e.end);
    // Touch the bytes the way a loader would, so ASan sees any bad range.
    const uint8_t* p = data + header->data_start + e.begin;
    if (ultramem::IsFloatDType(e.dtype) && e.NumElements() <= 4096) {
      std::vector<float> out(static_cast<size_t>(e.NumElements()));
      ultramem::ConvertToF32(e.dtype, p, out.size(), out.data());
    } else {
      volatile uint8_t sink = 0;
      for (uint64_t i = 0; i < e.end - e.begin; i += 61) sink = sink ^ p[i];
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    Require(ranges[i].first >= ranges[i - 1].second, "no overlapping tensors");
  }
  // Parsing just the header bytes must agree with parsing the whole file.
  const auto prefix = ParseSafetensorsHeader(bytes.substr(0, header->data_start), size, kName);
  Require(prefix.ok() && prefix->tensors.size() == header->tensors.size() &&
              prefix->metadata == header->metadata,
          "header-only parse agrees");
  return 0;
}
