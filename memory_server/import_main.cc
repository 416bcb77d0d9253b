// ultramem-import: writes one shard's value-table blocks of a checkpoint into a store version.
//   ultramem-import --checkpoint=DIR --store_dir=DIR --version=V [--layers=0,1] [--rows=B:E]
//                   [--cols=B:E] [--store_dtype=auto|f32|bf16] [--activate=true]
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/flags_util.h"
#include "common/log.h"
#include "memory_server/importer.h"

ABSL_FLAG(std::string, checkpoint, "", "model directory (config.json + safetensors)");
ABSL_FLAG(std::string, store_dir, "", "store directory (created if missing)");
ABSL_FLAG(std::string, version, "", "store version to write; rerun with the same one to resume");
ABSL_FLAG(std::string, model_id, "", "model id reported by Info (default: dir name + config CRC)");
ABSL_FLAG(std::string, layers, "", "memory layers to import, comma separated (default: all)");
ABSL_FLAG(std::string, rows, "", "row range B:E of every layer (default: all N rows)");
ABSL_FLAG(std::string, cols, "", "column range B:E (default: all Dv columns)");
ABSL_FLAG(std::string, store_dtype, "auto", "auto (BF16 stays BF16, else F32), f32 or bf16");
ABSL_FLAG(int64_t, chunk_rows, 8192, "rows per resumable, verified unit");
ABSL_FLAG(int32_t, target_value_bytes, 4096, "rows are grouped into RocksDB values of about this size");
ABSL_FLAG(bool, activate, true, "point CURRENT at the version when complete");
ABSL_FLAG(std::string, progress, "auto", "progress line on stderr: auto (on a terminal), on, off");
ABSL_FLAG(int64_t, debug_pause_after_chunks, -1,
          "testing: after this many chunks print PAUSED on stdout and wait for a signal");

namespace {

bool ParseRange(const std::string& text, int64_t* begin, int64_t* end) {
  if (text.empty()) return true;
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  return parts.size() == 2 && absl::SimpleAtoi(parts[0], begin) && absl::SimpleAtoi(parts[1], end);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Imports value tables of a checkpoint into a memory-server store.");
  ultramem::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  ultramem::memory::ImportOptions options;
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint);
  options.store_dir = absl::GetFlag(FLAGS_store_dir);
  options.version = absl::GetFlag(FLAGS_version);
  options.model_id = absl::GetFlag(FLAGS_model_id);
  options.store_dtype = absl::GetFlag(FLAGS_store_dtype);
  options.chunk_rows = absl::GetFlag(FLAGS_chunk_rows);
  options.target_value_bytes = absl::GetFlag(FLAGS_target_value_bytes);
  options.activate = absl::GetFlag(FLAGS_activate);
  if (options.checkpoint_dir.empty() || options.store_dir.empty() || options.version.empty()) {
    std::fprintf(stderr, "ultramem-import: --checkpoint, --store_dir and --version are required\n");
    return 2;
  }
  for (absl::string_view layer : absl::StrSplit(absl::GetFlag(FLAGS_layers), ',', absl::SkipEmpty())) {
    int j;
    if (!absl::SimpleAtoi(layer, &j)) {
      std::fprintf(stderr, "ultramem-import: bad --layers\n");
      return 2;
    }
    options.layers.push_back(j);
  }
  int64_t col_begin = 0, col_end = -1;
  if (!ParseRange(absl::GetFlag(FLAGS_rows), &options.row_begin, &options.row_end) ||
      !ParseRange(absl::GetFlag(FLAGS_cols), &col_begin, &col_end)) {
    std::fprintf(stderr, "ultramem-import: --rows and --cols take B:E\n");
    return 2;
  }
  options.col_begin = static_cast<int>(col_begin);
  options.col_end = static_cast<int>(col_end);
  const std::string progress = absl::GetFlag(FLAGS_progress);
  options.show_progress = progress == "on" || (progress == "auto" && isatty(STDERR_FILENO));
  const int64_t pause_after = absl::GetFlag(FLAGS_debug_pause_after_chunks);
  if (pause_after >= 0) {
    options.on_chunk_committed = [pause_after](int64_t chunks) {
      if (chunks != pause_after) return;
      std::printf("PAUSED\n");
      std::fflush(stdout);
      for (;;) pause();
    };
  }

  auto result = ultramem::memory::RunImport(options);
  if (!result.ok()) {
    UM_LOG_ERROR("import failed: ", result.status().ToString());
    return 1;
  }
  if (result->already_complete) {
    UM_LOG_INFO("version ", options.version, " was already complete",
                options.activate ? "; CURRENT points at it" : "");
  } else {
    UM_LOG_INFO("imported version ", options.version, ": ", result->chunks_written,
                " chunks written, ", result->chunks_resumed, " resumed, ", result->bytes_written,
                " bytes in ", result->seconds, " s", options.activate ? "; CURRENT points at it" : "");
  }
  return 0;
}
