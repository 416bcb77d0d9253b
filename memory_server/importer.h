// Import of value tables (memory.{j}.values) from a checkpoint into a store version: one shard's
// blocks, resumable, checksummed, published only when complete (MANIFEST.json written last, then
// CURRENT switched by rename), beside any version already being served.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory_server/cold_store.h"
#include "memory_server/store_format.h"

namespace ultramem::memory {

struct ImportOptions {
  std::string checkpoint_dir;  // the model directory (MODEL.md §4)
  std::string store_dir;       // created if missing
  // The version to write, [A-Za-z0-9._-]{1,64}. Rerunning the same command with the same version
  // resumes an interrupted import; a different plan for an unfinished version is refused.
  std::string version;
  // Names the checkpoint in Info. Empty: "<checkpoint dir name>-<CRC-32C of config.json>".
  std::string model_id;
  std::vector<int> layers;  // memory layers to import; empty = all
  int64_t row_begin = 0;    // rows [row_begin, row_end) of every imported layer; -1 = N
  int64_t row_end = -1;
  int col_begin = 0;        // columns [col_begin, col_end); -1 = Dv
  int col_end = -1;
  // A checkpoint that declares synthetic values (common/synthetic_values.h) makes a synthetic
  // store: MANIFEST.json records the function, no row is written (instant, any size).
  // "auto" keeps BF16 tables as BF16 and stores everything else as F32 (exact); "f32" or "bf16"
  // forces one (bf16 halves the store and the memory traffic and rounds F32 tables).
  std::string store_dtype = "auto";
  // Rows are grouped so that one RocksDB value is about this big: per-key overhead (~40 bytes of
  // key, index and filter) stays small, while a point read of one row reads little more.
  int target_value_bytes = 4096;
  // Rows per resumable unit: one write batch, one progress record, one read-back check.
  int64_t chunk_rows = 8192;
  bool activate = true;  // point CURRENT at the version when it is complete
  ColdStoreOptions cold;  // the layout the server reads best (filters, block size)
  bool show_progress = false;  // a progress line (rows/s, bytes, ETA) on stderr, redrawn in place
  // Called after each chunk is durably committed, with the number committed by this run (tests
  // use it to stop an import in the middle).
  std::function<void(int64_t)> on_chunk_committed;
};

struct ImportResult {
  StoreManifest manifest;
  bool already_complete = false;  // the version was complete before this run; nothing written
  int64_t chunks_written = 0;
  int64_t chunks_resumed = 0;     // committed by an earlier run and verified
  int64_t bytes_written = 0;
  double seconds = 0;
};

// Runs the import. InvalidArgument for bad options (ranges, names, a checkpoint without memory
// layers); the checkpoint loader's errors as they are; FailedPrecondition when the version holds
// an unfinished import with another plan; AlreadyExists when the version is complete with another
// plan; DataLoss when a block reads back with a wrong checksum.
absl::StatusOr<ImportResult> RunImport(const ImportOptions& options);

}  // namespace ultramem::memory
