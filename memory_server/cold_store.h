// The cold tier: every row of a store version in RocksDB, opened read-only, tuned for point reads.
// The only place (with rocks_status.cc) that touches RocksDB on the serving side.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory_server/store_format.h"

namespace rocksdb {
class DB;
class Cache;
struct Options;
}  // namespace rocksdb

namespace ultramem::memory {

struct ColdStoreOptions {
  // RocksDB block cache (uncompressed data, index and filter blocks). Larger keeps more cold rows
  // one memcpy away; it competes with the hot tier for RAM, and a row in both is held twice.
  int64_t block_cache_bytes = 256ll << 20;
  // Bloom filter bits per key. 10 gives ~1% false positives: each point read of a key that is not
  // in an SST then costs no data-block read. Raising it trades filter memory for fewer misses.
  int bloom_bits_per_key = 10;
  // Data block size. Stored values are ~4 KiB (see ImportOptions::target_value_bytes), so one
  // block holds about one value and a point read reads little more than it needs; larger blocks
  // shrink the index but read more bytes per row.
  int block_size_bytes = 4096;
  // Keep index and filter blocks of all files in memory for as long as the store is open (no
  // extra read on a point read). Costs their size in RAM (~1% of the data with these defaults);
  // false lets them compete with data blocks in the block cache.
  bool pin_index_and_filter_blocks = true;
  // Verify RocksDB's own block checksums (XXH3) on every read. Catches disk corruption for a
  // fraction of a microsecond per 4 KiB block.
  bool verify_checksums = true;
  // Files RocksDB may keep open; -1 opens all at start (fastest, one fd per SST file).
  int max_open_files = -1;
  // Read SST files through mmap: a point read of a page-cached file is a memory access instead of
  // a pread(2) system call (several times faster for cold rows on a warm page cache). Turn off on
  // 32-bit hosts or for stores larger than the address space one wants to map.
  bool use_mmap_reads = true;
};

// Builds the rocksdb::Options both the import (writing) and the server (reading) use, so that a
// store is written in the layout the server reads best.
void FillRocksOptions(const ColdStoreOptions& options, rocksdb::Options* out);

class ColdStore {
 public:
  // Opens <store_dir>/versions/<manifest.version>/db read-only. Several servers may open one store.
  static absl::StatusOr<std::unique_ptr<ColdStore>> Open(const std::string& store_dir,
                                                         const StoreManifest& manifest,
                                                         const ColdStoreOptions& options);
  ~ColdStore();

  // One row to read: `layer`'s block row `row` (absolute row id, inside the block).
  struct RowRead {
    int layer = 0;
    int64_t row = 0;
  };
  // Reads the rows in one batched MultiGet (rows sharing a key are read once) and calls
  // `sink(i, data)` with a pointer to row i's stored bytes (RowBytes() long, valid only during the
  // call). Thread safe. INTERNAL naming the key on a RocksDB error; DATA_LOSS on a missing or short
  // value (a store that disagrees with its manifest).
  absl::Status ReadRows(const std::vector<RowRead>& rows,
                        const std::function<void(size_t, const uint8_t*)>& sink) const;

  // Visits every stored row of every block in order: sink(layer, row, data). Used to preload the
  // hot tier and to verify block checksums. Stops at the first error.
  absl::Status ScanAll(const std::function<void(int, int64_t, const uint8_t*)>& sink) const;

  // Approximate bytes in the block cache.
  int64_t CacheUsageBytes() const;

 private:
  ColdStore() = default;
  StoreManifest manifest_;
  ColdStoreOptions options_;
  std::shared_ptr<rocksdb::Cache> cache_;
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace ultramem::memory
