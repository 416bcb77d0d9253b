// Writing safetensors files (MODEL.md §4 layout), for tests, tools and converters. The reader side
// is common/safetensors.h; everything written here round-trips through it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace ultramem {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // empty: a scalar (one element)
  std::string bytes;           // little-endian data, exactly elements × DTypeSize(dtype) bytes
};

// Writes `tensors` (data in the given order) and `metadata` (the "__metadata__" object, omitted
// when empty) to `path`. The header is padded with spaces to a multiple of 8 bytes, as the
// reference writer does, so that data starts aligned. Atomic: written to a temporary file in the
// same directory, then renamed over `path`. InvalidArgument for a byte count that disagrees with
// dtype × shape, a negative dimension, a duplicate or reserved ("__metadata__") name; the errno's
// code (with the path) when the file cannot be written.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes `contents` to `path` atomically (temporary file + fsync + rename).
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);

// Little-endian bytes of values. BF16 and F16 round to nearest even (F32ToBf16, F32ToF16).
std::string F32Bytes(const std::vector<float>& values);
std::string Bf16Bytes(const std::vector<float>& values);
std::string F16Bytes(const std::vector<float>& values);
std::string I32Bytes(const std::vector<int32_t>& values);
std::string I64Bytes(const std::vector<int64_t>& values);
// F32Bytes, Bf16Bytes or F16Bytes by `dtype`; empty string for an integer dtype.
std::string FloatBytes(DType dtype, const std::vector<float>& values);

}  // namespace ultramem
