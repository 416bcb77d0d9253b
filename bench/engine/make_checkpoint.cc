// ultramem-make-checkpoint: writes a random checkpoint for a config.json, for benchmarks.
//
//   ultramem-make-checkpoint --config CONFIG.json --out DIR [--dtype F32|BF16] [--seed 1] [--split]
//       [--shuffle_dtype I32|I64] [--synthetic_values_seed S]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/checkpoint_writer.h"
#include "common/flags_util.h"
#include "common/model_config.h"
#include "common/status.h"
#include "common/tool_main.h"

ABSL_FLAG(std::string, config, "", "config.json to instantiate");
ABSL_FLAG(std::string, out, "", "output model directory");
ABSL_FLAG(std::string, dtype, "F32", "F32, BF16 or F16 for every float tensor");
ABSL_FLAG(uint64_t, seed, 1, "random seed");
ABSL_FLAG(bool, split, true, "value tables in their own files");
ABSL_FLAG(double, scale, 0.05, "weights uniform in [-scale, scale]");
ABSL_FLAG(std::string, shuffle_dtype, "I64", "I32 or I64 for memory.{j}.shuffle_index");
ABSL_FLAG(int64_t, synthetic_values_seed, -1,
          "if >= 0: no value tables in the files; synthetic_values.json declares them as a function "
          "of this seed (common/synthetic_values.h), for tables too large to write");

namespace ultramem {
absl::Status Run() {
  std::ifstream in(absl::GetFlag(FLAGS_config));
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", absl::GetFlag(FLAGS_config)));
  std::stringstream ss;
  ss << in.rdbuf();
  UM_ASSIGN_OR_RETURN(ModelConfig cfg, ParseModelConfig(ss.str(), absl::GetFlag(FLAGS_config)));
  RandomCheckpointOptions opts;
  UM_ASSIGN_OR_RETURN(opts.float_dtype, ParseDType(absl::GetFlag(FLAGS_dtype)));
  opts.seed = absl::GetFlag(FLAGS_seed);
  opts.split_files = absl::GetFlag(FLAGS_split);
  opts.scale = static_cast<float>(absl::GetFlag(FLAGS_scale));
  UM_ASSIGN_OR_RETURN(opts.shuffle_dtype, ParseDType(absl::GetFlag(FLAGS_shuffle_dtype)));
  if (opts.shuffle_dtype != DType::kI32 && opts.shuffle_dtype != DType::kI64) {
    return absl::InvalidArgumentError("--shuffle_dtype must be I32 or I64");
  }
  if (absl::GetFlag(FLAGS_synthetic_values_seed) >= 0) {
    opts.synthetic_values = SyntheticValues{
        static_cast<uint64_t>(absl::GetFlag(FLAGS_synthetic_values_seed)), opts.scale};
  }
  // A benchmark-sized model takes a minute: say what is happening on stderr.
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "ultramem-make-checkpoint: writing %s (%d blocks, %d memory layers%s) ...\n",
               absl::GetFlag(FLAGS_out).c_str(), cfg.num_layers, cfg.NumMemoryLayers(),
               opts.synthetic_values ? ", values synthetic" : "");
  UM_RETURN_IF_ERROR(WriteRandomCheckpoint(absl::GetFlag(FLAGS_out), cfg, opts));
  std::fprintf(stderr, "ultramem-make-checkpoint: done in %.1f s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return absl::OkStatus();
}
}  // namespace ultramem

int main(int argc, char** argv) {
  return ultramem::RunTool(argc, argv, "ultramem-make-checkpoint", ultramem::Run);
}
