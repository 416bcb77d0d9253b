// One store version opened for serving: its manifest, the RocksDB cold tier and the hot tier, and
// the pooled lookup over them (MODEL.md §3 step 10 restricted to the shard's rows and columns).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory_server/cold_store.h"
#include "memory_server/hot_tier.h"
#include "memory_server/request_decoder.h"
#include "memory_server/store_format.h"

namespace ultramem::memory {

class MemoryMetrics;

struct ValueStoreOptions {
  ColdStoreOptions cold;
  // Host RAM for hot rows, in bytes of row data. When the shard's rows fit, all of them are
  // preloaded at open (no cold read ever, at the cost of a full scan at start); otherwise a CLOCK
  // cache of this size fills on misses. 0 serves every row from RocksDB (and its block cache).
  int64_t hot_capacity_bytes = 4ll << 30;
  // Verify each block's CRC-32C against the manifest while preloading (free: the rows are read
  // anyway). Without a full preload no scan is done and RocksDB's own block checksums guard reads.
  bool verify_block_checksums = true;
};

// What one lookup touched.
struct LookupStats {
  int64_t hot_rows = 0;   // selections served by the hot tier
  int64_t cold_rows = 0;  // selections read from RocksDB
  double cold_read_seconds = 0;
};

// Per-call buffers; reuse one per thread to avoid allocations.
struct LookupScratch {
  std::vector<RowId> ids;
  std::vector<const uint8_t*> rows;
  std::vector<PinHandle> handles;
  std::vector<uint8_t> pinned;     // 1 where rows[i] is a pinned hot row
  std::vector<uint8_t> miss_data;  // cold rows read for this call
  int misses = 0;
};

// Thread safe after Open: any number of lookups may run at once.
class ValueStore {
 public:
  // Opens version `version` of the store at `store_dir` (the one CURRENT names when empty).
  // NotFound when there is no such version (or no CURRENT); FailedPrecondition when the version's
  // import did not finish (no manifest); DataLoss when a block's checksum disagrees at preload.
  // `metrics` may be null; otherwise it must outlive the store.
  static absl::StatusOr<std::unique_ptr<ValueStore>> Open(const std::string& store_dir,
                                                          const std::string& version,
                                                          const ValueStoreOptions& options,
                                                          MemoryMetrics* metrics);
  ~ValueStore();

  const StoreManifest& manifest() const { return manifest_; }
  const HotTier& hot() const { return *hot_; }
  int width() const { return manifest_.blocks[0].width(); }

  // The lookup in two steps so that a caller can answer all-hot lookups inline and hand only
  // those with misses to a thread that may block on disk:
  // PinHot pins the hot rows and returns the number of misses; it never blocks on I/O.
  int PinHot(const DecodedLookup& lookup, LookupScratch* scratch) const;
  // Reads the misses from RocksDB (admitting them to the hot tier), pools into `out`
  // ([T, E, width] float32, overwritten) and unpins. Call exactly once after PinHot.
  absl::Status Complete(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                        LookupStats* stats) const;
  // PinHot + Complete.
  absl::Status Lookup(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                      LookupStats* stats) const;

 private:
  ValueStore() = default;
  absl::Status Preload(FullHotTier* tier);

  StoreManifest manifest_;
  ValueStoreOptions options_;
  MemoryMetrics* metrics_ = nullptr;
  std::unique_ptr<ColdStore> cold_;
  std::unique_ptr<HotTier> hot_;
};

}  // namespace ultramem::memory
