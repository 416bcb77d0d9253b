// A model directory (MODEL.md §4): config.json plus one or more safetensors files, mmapped and
// validated against the config. Thread safe after Open.
#pragma once

#include <optional>
#include "common/synthetic_values.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace ultramem {

struct CheckpointOptions {
  // Verify that every memory.{j}.shuffle_index is a permutation of [0, E·N). Costs one pass over
  // E·N integers per layer; a memory server that never reads shuffle_index may turn it off.
  bool check_shuffle_index = true;
};

class Checkpoint {
 public:
  // Opens `dir`: reads and validates config.json, then the single *.safetensors file or the files
  // named by model.safetensors.index.json (required when there are several). Refuses, with a
  // message naming the file and the tensor: a missing or extra tensor, a wrong shape or dtype
  // (floats F32/BF16/F16; shuffle_index I32/I64), a header pointing outside its file, a truncated
  // file, a bad JSON header, an index naming a missing file or disagreeing with the files, and a
  // shuffle_index that is not a permutation. NotFound when dir or config.json is missing;
  // InvalidArgument for everything malformed. With an index, every file it names is opened and
  // other *.safetensors files in dir are ignored; without one, dir must hold exactly one.
  // The files stay mapped for the Checkpoint's lifetime; they must not be truncated meanwhile
  // (a read of a vanished page is SIGBUS).
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir,
                                                          const CheckpointOptions& options = {});

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  // Set when the directory declares synthetic value tables (common/synthetic_values.h): the
  // memory.{j}.values tensors are then absent from the files, Get() of one is NotFound, and
  // ReadF32 / ReadF32Block compute them.
  const std::optional<SyntheticValues>& synthetic_values() const { return synthetic_; }
  // memory.{j}.values of a synthetic checkpoint: the layer j; -1 for any other name.
  int SyntheticValuesLayer(std::string_view name) const;

  // The named tensor; NotFound naming the directory when absent. (All reads below: NotFound the
  // same way.)
  absl::StatusOr<TensorView> Get(std::string_view name) const;
  // Converts a float tensor to float32 (size = its element count). InvalidArgument for int dtypes.
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name) const;
  // Converts rows [row_begin, row_end) × columns [col_begin, col_end) of a 2-D float tensor to
  // float32, row-major, into `out` (size (row_end-row_begin)*(col_end-col_begin); may be null when
  // that is 0). InvalidArgument when the tensor is not 2-D float or the block is not inside it.
  absl::Status ReadF32Block(std::string_view name, int64_t row_begin, int64_t row_end,
                            int64_t col_begin, int64_t col_end, float* out) const;
  // Reads an I32/I64 tensor widened to int64. InvalidArgument for float dtypes.
  absl::StatusOr<std::vector<int64_t>> ReadI64(std::string_view name) const;

  ~Checkpoint();

 private:
  Checkpoint() = default;
  std::string dir_;
  ModelConfig config_;
  std::optional<SyntheticValues> synthetic_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  struct Impl;
  std::unique_ptr<Impl> impl_;  // name -> (file, entry) index
};

}  // namespace ultramem
