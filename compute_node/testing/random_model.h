// Test support: a random checkpoint in a temporary directory, opened as a ModelRuntime, removed
// with the object. Shared by the engine and scheduler tests.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/checkpoint_writer.h"
#include "common/status.h"
#include "compute_node/model_runtime.h"

namespace ultramem::testing {

class RandomModel {
 public:
  static absl::StatusOr<std::unique_ptr<RandomModel>> Create(const ModelConfig& config, uint64_t seed,
                                                             float scale) {
    char tmpl[] = "/tmp/um_random_model_XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
    std::unique_ptr<RandomModel> m(new RandomModel(tmpl));
    RandomCheckpointOptions opts;
    opts.seed = seed;
    opts.scale = scale;
    UM_RETURN_IF_ERROR(WriteRandomCheckpoint(m->dir_, config, opts));
    ModelRuntimeOptions ro;
    ro.model_dir = m->dir_;
    UM_ASSIGN_OR_RETURN(m->runtime_, OpenModelRuntime(ro));
    return m;
  }
  ~RandomModel() {
    runtime_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  ModelRuntime& runtime() { return *runtime_; }
  const std::string& dir() const { return dir_; }

 private:
  explicit RandomModel(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
  std::unique_ptr<ModelRuntime> runtime_;
};

}  // namespace ultramem::testing
