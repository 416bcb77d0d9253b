// Implementation of common/checkpoint.h: locating the safetensors files of a model directory,
// validating every tensor against MODEL.md §4, and typed reads.
#include "common/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/absl_compat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace ultramem {

struct Checkpoint::Impl {
  struct Location {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };
  absl::flat_hash_map<std::string, Location> tensors;
};

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kConfigName[] = "config.json";
constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSafetensorsSuffix[] = ".safetensors";

std::string JoinPath(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// NotFound when the file does not exist.
absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return out;
}

bool IsShuffleIndex(std::string_view name) {
  constexpr std::string_view kSuffix = ".shuffle_index";
  return name.size() > kSuffix.size() && name.substr(name.size() - kSuffix.size()) == kSuffix;
}

// A file name from an index must stay inside the model directory.
bool IsSafeRelativePath(const std::string& name) {
  if (name.empty()) return false;
  const fs::path p(name);
  if (p.is_absolute()) return false;
  for (const fs::path& part : p) {
    if (part == "..") return false;
  }
  return true;
}

// model.safetensors.index.json -> tensor name -> file name (relative to the directory).
absl::StatusOr<std::map<std::string, std::string>> ParseIndex(const std::string& index_path) {
  UM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  const Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
  }
  auto map_it = root.find("weight_map");
  if (map_it == root.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": missing or non-object \"weight_map\""));
  }
  std::map<std::string, std::string> weight_map;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    if (!it.value().is_string() || !IsSafeRelativePath(it.value().get<std::string>())) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor \"", it.key(),
          "\": file must be a relative path inside the model directory"));
    }
    weight_map[it.key()] = it.value().get<std::string>();
  }
  if (weight_map.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" is empty"));
  }
  return weight_map;
}

// Refuses anything but a permutation of [0, n): every value in range and none repeated. The tensor
// already has exactly n elements (its shape was checked).
absl::Status CheckPermutation(const TensorView& view, int64_t n) {
  const bool is32 = view.entry->dtype == DType::kI32;
  auto value_at = [&](int64_t i) -> int64_t {
    if (is32) {
      int32_t v;
      std::memcpy(&v, view.data + 4 * i, 4);
      return v;
    }
    int64_t v;
    std::memcpy(&v, view.data + 8 * i, 8);
    return v;
  };
  auto error = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(view.file, ": tensor \"", view.entry->name,
                                                   "\": not a permutation of [0, ", n,
                                                   "): ", ToAbsl(what)));
  };
  std::vector<uint64_t> seen((static_cast<uint64_t>(n) + 63) / 64, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = value_at(i);
    if (v < 0 || v >= n) return error(absl::StrCat("element ", i, " is ", v, ", out of range"));
    uint64_t& word = seen[static_cast<uint64_t>(v) / 64];
    const uint64_t bit = uint64_t{1} << (static_cast<uint64_t>(v) % 64);
    if (word & bit) {
      int64_t first = 0;
      while (value_at(first) != v) ++first;
      return error(absl::StrCat("value ", v, " appears twice (elements ", first, " and ", i, ")"));
    }
    word |= bit;
  }
  return absl::OkStatus();
}

absl::StatusOr<SyntheticValues> ParseSyntheticValues(const std::string& path) {
  UM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  SyntheticValues s;
  for (const auto& [key, value] : j.items()) {
    if (key == "seed" && value.is_number_unsigned()) {
      s.seed = value.get<uint64_t>();
    } else if (key == "scale" && value.is_number() && value.get<double>() > 0 &&
               value.get<double>() < 1e30) {
      s.scale = value.get<float>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": bad or unknown field \"", key, "\" (expected seed: unsigned, scale: > 0)"));
    }
  }
  if (!j.contains("seed")) return absl::InvalidArgumentError(absl::StrCat(path, ": \"seed\" is required"));
  return s;
}

}  // namespace

int Checkpoint::SyntheticValuesLayer(std::string_view name) const {
  if (!synthetic_ || !absl::StartsWith(ToAbsl(name), "memory.") ||
      !absl::EndsWith(ToAbsl(name), ".values")) {
    return -1;
  }
  int j;
  if (!absl::SimpleAtoi(ToAbsl(name.substr(7, name.size() - 14)), &j) || j < 0 ||
      j >= config_.NumMemoryLayers()) {
    return -1;
  }
  return j;
}

Checkpoint::~Checkpoint() = default;

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir,
                                                             const CheckpointOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no such model directory"));
  }
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  ckpt->impl_ = std::make_unique<Impl>();

  const std::string config_path = JoinPath(dir, kConfigName);
  UM_ASSIGN_OR_RETURN(const std::string config_text, ReadFileToString(config_path));
  UM_ASSIGN_OR_RETURN(ckpt->config_, ParseModelConfig(config_text, config_path));
  const std::string synthetic_path = JoinPath(dir, kSyntheticValuesFile);
  if (fs::exists(synthetic_path, ec)) {
    UM_ASSIGN_OR_RETURN(ckpt->synthetic_, ParseSyntheticValues(synthetic_path));
    if (!ckpt->config_.memory) {
      return absl::InvalidArgumentError(
          absl::StrCat(synthetic_path, ": synthetic values for a model without memory layers"));
    }
  }

  // Open the files. `source` is what a message about a missing tensor names: the single file, or
  // the index that should have listed it.
  std::string source;
  auto& tensors = ckpt->impl_->tensors;
  const std::string index_path = JoinPath(dir, kIndexName);
  if (fs::exists(index_path, ec)) {
    source = index_path;
    UM_ASSIGN_OR_RETURN(const auto weight_map, ParseIndex(index_path));
    std::map<std::string, const SafetensorsFile*> by_name;  // file name in the index -> file
    for (const auto& [tensor, file_name] : weight_map) {
      if (by_name.count(file_name) != 0) continue;
      const std::string path = JoinPath(dir, file_name);
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
      if (absl::IsNotFound(file.status())) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", tensor,
                                                       "\" is mapped to ", path,
                                                       ", which does not exist"));
      }
      if (!file.ok()) return file.status();
      by_name[file_name] = file->get();
      ckpt->files_.push_back(*std::move(file));
    }
    for (const auto& [tensor, file_name] : weight_map) {
      const SafetensorsFile* file = by_name[file_name];
      const TensorEntry* entry = file->Find(tensor);
      if (entry == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", tensor,
                                                       "\" is mapped to ", file->path(),
                                                       ", which does not contain it"));
      }
      tensors[tensor] = Impl::Location{file, entry};
    }
    // The other direction: every tensor of every file is where the index says.
    for (const auto& file : ckpt->files_) {
      for (const auto& [tensor, entry] : file->header().tensors) {
        auto it = tensors.find(tensor);
        if (it == tensors.end() || it->second.file != file.get()) {
          return absl::InvalidArgumentError(absl::StrCat(
              file->path(), ": tensor \"", tensor, "\" is not mapped to this file by ",
              index_path, it == tensors.end() ? " (not listed)"
                                              : absl::StrCat(" (mapped to ", it->second.file->path(), ")")));
        }
      }
    }
  } else {
    std::vector<std::string> found;
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name.size() > std::strlen(kSafetensorsSuffix) &&
          name.compare(name.size() - std::strlen(kSafetensorsSuffix), std::string::npos,
                       kSafetensorsSuffix) == 0) {
        found.push_back(name);
      }
    }
    if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot list: ", ec.message()));
    std::sort(found.begin(), found.end());
    if (found.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": no *.safetensors file"));
    }
    if (found.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": ", found.size(), " safetensors files (", absl::StrJoin(found, ", "),
          ") but no ", kIndexName));
    }
    source = JoinPath(dir, found[0]);
    UM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(source));
    for (const auto& [tensor, entry] : file->header().tensors) {
      tensors[tensor] = Impl::Location{file.get(), &entry};
    }
    ckpt->files_.push_back(std::move(file));
  }

  // Validate against MODEL.md §4: names, shapes, dtypes.
  auto expected = ExpectedTensors(ckpt->config_);
  if (ckpt->synthetic_) {
    std::erase_if(expected, [&](const auto& e) { return ckpt->SyntheticValuesLayer(e.first) >= 0; });
  }
  absl::flat_hash_set<std::string_view> expected_names;
  for (const auto& [name, shape] : expected) {
    expected_names.insert(name);
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor \"", name,
                                                     "\" is missing (expected shape ",
                                                     ShapeString(shape), ")"));
    }
    const TensorEntry& entry = *it->second.entry;
    const std::string& path = it->second.file->path();
    if (entry.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", ToAbsl(name), "\" has shape ",
                                                     ShapeString(entry.shape), ", config expects ",
                                                     ShapeString(shape)));
    }
    const bool index_tensor = IsShuffleIndex(name);
    const bool dtype_ok = index_tensor
                              ? (entry.dtype == DType::kI32 || entry.dtype == DType::kI64)
                              : IsFloatDType(entry.dtype);
    if (!dtype_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor \"", ToAbsl(name), "\" has dtype ", ToAbsl(DTypeName(entry.dtype)), ", expected ",
          index_tensor ? "I32 or I64" : "F32, BF16 or F16"));
    }
  }
  // Extras, reported in file order so that the message is deterministic.
  for (const auto& file : ckpt->files_) {
    for (const auto& [tensor, entry] : file->header().tensors) {
      if (!expected_names.contains(tensor)) {
        return absl::InvalidArgumentError(absl::StrCat(
            file->path(), ": tensor \"", tensor, "\" is not part of this model (config ",
            config_path, ")"));
      }
    }
  }

  if (options.check_shuffle_index && ckpt->config_.memory) {
    const int64_t n = ckpt->config_.memory->NumVirtual();
    const int layers = ckpt->config_.NumMemoryLayers();
    std::vector<absl::Status> results(layers);
    auto check = [&](int j) {
      absl::StatusOr<TensorView> view = ckpt->Get(absl::StrCat("memory.", j, ".shuffle_index"));
      results[j] = view.ok() ? CheckPermutation(*view, n) : view.status();
    };
    if (n < (int64_t{1} << 24)) {
      for (int j = 0; j < layers; ++j) check(j);
    } else {  // benchmark-sized tables: one thread a layer (a pass over E·N random bits each)
      std::vector<std::thread> threads;
      for (int j = 0; j < layers; ++j) threads.emplace_back(check, j);
      for (std::thread& t : threads) t.join();
    }
    for (const absl::Status& st : results) UM_RETURN_IF_ERROR(st);
  }
  return ckpt;
}

absl::StatusOr<TensorView> Checkpoint::Get(std::string_view name) const {
  auto it = impl_->tensors.find(ToAbsl(name));
  if (it == impl_->tensors.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor \"", ToAbsl(name), "\""));
  }
  return it->second.file->View(*it->second.entry);
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadF32(std::string_view name) const {
  if (SyntheticValuesLayer(name) >= 0) {
    const int64_t rows = config_.memory->NumRows(), cols = config_.memory->value_dim;
    std::vector<float> out(static_cast<size_t>(rows * cols));
    UM_RETURN_IF_ERROR(ReadF32Block(name, 0, rows, 0, cols, out.data()));
    return out;
  }
  UM_ASSIGN_OR_RETURN(const TensorView view, Get(name));
  if (!IsFloatDType(view.entry->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(view.file, ": tensor \"", ToAbsl(name), "\" is ",
                                                   ToAbsl(DTypeName(view.entry->dtype)),
                                                   ", not a float tensor"));
  }
  std::vector<float> out(static_cast<size_t>(view.NumElements()));
  ConvertToF32(view.entry->dtype, view.data, out.size(), out.data());
  return out;
}

absl::Status Checkpoint::ReadF32Block(std::string_view name, int64_t row_begin, int64_t row_end,
                                      int64_t col_begin, int64_t col_end, float* out) const {
  if (const int layer = SyntheticValuesLayer(name); layer >= 0) {
    const int64_t rows = config_.memory->NumRows(), cols = config_.memory->value_dim;
    if (row_begin < 0 || row_begin > row_end || row_end > rows || col_begin < 0 ||
        col_begin > col_end || col_end > cols) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir_, ": synthetic tensor \"", ToAbsl(name), "\": block rows [", row_begin, ", ", row_end,
          ") cols [", col_begin, ", ", col_end, ") outside its shape [", rows, ", ", cols, "]"));
    }
    const int64_t width = col_end - col_begin;
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t c = col_begin; c < col_end; ++c) {
        out[(r - row_begin) * width + (c - col_begin)] = Bf16ToF32(SyntheticValueBf16(
            synthetic_->seed, synthetic_->scale, layer, r, static_cast<int>(c)));
      }
    }
    return absl::OkStatus();
  }
  UM_ASSIGN_OR_RETURN(const TensorView view, Get(name));
  const TensorEntry& e = *view.entry;
  if (!IsFloatDType(e.dtype) || e.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(view.file, ": tensor \"", ToAbsl(name), "\" is ",
                                                   ToAbsl(DTypeName(e.dtype)), " ", ShapeString(e.shape),
                                                   ", not a 2-D float tensor"));
  }
  const int64_t rows = e.shape[0], cols = e.shape[1];
  if (row_begin < 0 || row_begin > row_end || row_end > rows || col_begin < 0 ||
      col_begin > col_end || col_end > cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        view.file, ": tensor \"", ToAbsl(name), "\": block rows [", row_begin, ", ", row_end, ") cols [",
        col_begin, ", ", col_end, ") outside its shape ", ShapeString(e.shape)));
  }
  const size_t elem = DTypeSize(e.dtype);
  const int64_t width = col_end - col_begin;
  if (width == 0 || row_begin == row_end) return absl::OkStatus();
  if (width == cols) {  // whole rows: one contiguous run
    ConvertToF32(e.dtype, view.data + row_begin * cols * elem,
                 static_cast<size_t>((row_end - row_begin) * cols), out);
    return absl::OkStatus();
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    ConvertToF32(e.dtype, view.data + (r * cols + col_begin) * elem, static_cast<size_t>(width),
                 out + (r - row_begin) * width);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> Checkpoint::ReadI64(std::string_view name) const {
  UM_ASSIGN_OR_RETURN(const TensorView view, Get(name));
  const DType dtype = view.entry->dtype;
  if (dtype != DType::kI32 && dtype != DType::kI64) {
    return absl::InvalidArgumentError(absl::StrCat(view.file, ": tensor \"", ToAbsl(name), "\" is ",
                                                   ToAbsl(DTypeName(dtype)), ", not I32 or I64"));
  }
  std::vector<int64_t> out(static_cast<size_t>(view.NumElements()));
  if (dtype == DType::kI64) {
    std::memcpy(out.data(), view.data, out.size() * sizeof(int64_t));
  } else {
    for (size_t i = 0; i < out.size(); ++i) {
      int32_t v;
      std::memcpy(&v, view.data + 4 * i, 4);
      out[i] = v;
    }
  }
  return out;
}

}  // namespace ultramem
