// The on-disk layout of a value store: one shard's blocks of value rows, in versions.
//
//   <store_dir>/CURRENT                       the served version's name; replaced by rename(2)
//   <store_dir>/versions/<version>/db/        RocksDB: rows grouped rows_per_key to a key
//   <store_dir>/versions/<version>/MANIFEST.json   written last: a version without one is
//                                                  incomplete and is never served
//
// Keys (big-endian so that RocksDB's order is block order, then row order):
//   'R' layer:u32 key_index:u64   rows [row_begin + key_index·rows_per_key, +rows_per_key) of the
//                                 block of `layer`, clipped to the block; row-major, stored dtype
//   'P' layer:u32 chunk:u64       import progress: chunk done, value crc32c:u32 of its rows' bytes
//   'A'                           the import plan (JSON); a resumed import must match it
//
// A synthetic store (imported from a checkpoint that declares synthetic_values.json, see
// common/synthetic_values.h) has a manifest with "synthetic_values": {"seed", "scale"} and no db/:
// its rows are SyntheticValueBf16(seed, scale, layer, row, col), computed by whoever holds them
// (the hot tier fills itself, misses are computed). Its blocks' crc32c are 0: there are no stored
// bytes to check, and computing them would cost a pass over the whole shard (144 GiB in issue #8).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/synthetic_values.h"

namespace ultramem::memory {

enum class StoreDType { kF32, kBF16 };
size_t StoreDTypeSize(StoreDType dtype);
absl::string_view StoreDTypeName(StoreDType dtype);  // "F32" / "BF16"
absl::StatusOr<StoreDType> ParseStoreDType(absl::string_view name);

// One (memory layer, row range, column range) block of a shard.
struct BlockSpec {
  int layer = 0;
  int64_t row_begin = 0;  // rows [row_begin, row_end) of memory.{layer}.values
  int64_t row_end = 0;
  int col_begin = 0;      // columns [col_begin, col_end); the same for every block of a store
  int col_end = 0;
  uint32_t crc32c = 0;    // of the block's stored bytes, row-major (filled in by the import);
                          // 0 in a synthetic store

  int64_t num_rows() const { return row_end - row_begin; }
  int width() const { return col_end - col_begin; }
};

struct StoreManifest {
  int format_version = 1;
  std::string model_id;   // names the checkpoint (directory name and config checksum by default)
  std::string version;    // this store version's name
  std::string source;     // checkpoint directory the rows came from (informational)
  int64_t num_rows = 0;   // N
  int expand = 1;         // E
  int value_dim = 0;      // Dv
  int cores = 1;          // h
  int num_memory_layers = 0;
  StoreDType dtype = StoreDType::kF32;
  int rows_per_key = 1;
  std::vector<BlockSpec> blocks;  // at most one per layer, ascending layer
  // Set: a synthetic store (no RocksDB rows; dtype BF16; values computed, see above).
  std::optional<SyntheticValues> synthetic;

  size_t RowBytes() const;  // one stored row: width × dtype size
  int64_t TotalBytes() const;  // all stored rows
  // The block of `layer`, or nullptr.
  const BlockSpec* FindBlock(int layer) const;
};

std::string ManifestToJson(const StoreManifest& manifest);
// InvalidArgument naming `where` on malformed JSON or inconsistent fields.
absl::StatusOr<StoreManifest> ManifestFromJson(absl::string_view json, absl::string_view where);

// Paths.
std::string VersionDir(const std::string& store_dir, const std::string& version);
std::string VersionDbDir(const std::string& store_dir, const std::string& version);
std::string ManifestPath(const std::string& store_dir, const std::string& version);
std::string CurrentPath(const std::string& store_dir);

// Version names are [A-Za-z0-9._-]{1,64}, not "." or "..". InvalidArgument otherwise.
absl::Status CheckVersionName(absl::string_view version);

// The version CURRENT names. NotFound when there is no CURRENT (nothing published yet).
absl::StatusOr<std::string> ReadCurrent(const std::string& store_dir);
// Points CURRENT at `version` atomically (write a temporary, fsync, rename, fsync the directory).
absl::Status WriteCurrent(const std::string& store_dir, const std::string& version);
// Writes `contents` to `path` atomically in the same way.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// The manifest of a complete version. FailedPrecondition when the version exists but has no
// manifest (an import that did not finish), NotFound when the version does not exist.
absl::StatusOr<StoreManifest> ReadManifest(const std::string& store_dir, const std::string& version);

// Keys.
std::string RowKey(int layer, uint64_t key_index);
std::string ProgressKey(int layer, uint64_t chunk);
inline constexpr char kPlanKey[] = "A";
// Decodes a RowKey; false when `key` is not one.
bool ParseRowKey(absl::string_view key, int* layer, uint64_t* key_index);

}  // namespace ultramem::memory
