// One store version opened for serving: its manifest, the RocksDB cold tier and the hot tier, and
// the pooled lookup over them (MODEL.md §3 step 10 restricted to the shard's rows and columns).
// The hot tier is host RAM (hot_tier.h, pooled on the CPU) or GPU memory (gpu_hot_tier.h, pooled
// by a kernel); a synthetic store (store_format.h) computes its rows instead of reading RocksDB.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory_server/cold_store.h"
#include "memory_server/gpu_hot_tier.h"
#include "memory_server/hot_tier.h"
#include "memory_server/request_decoder.h"
#include "memory_server/store_format.h"

namespace ultramem::memory {

class MemoryMetrics;
class SlotMap;

struct ValueStoreOptions {
  ColdStoreOptions cold;
  // Where hot rows live and are pooled: "cpu" (host RAM, CPU kernel) or "cuda" / "cuda:N" (GPU
  // memory as bf16 slots, one fused kernel per lookup; needs a CUDA build, the device, and a BF16
  // store). Open fails with FailedPrecondition when the device is not there.
  std::string device = "cpu";
  // Memory of `device` for hot rows, in bytes of row data. When the shard's rows fit, all of them
  // are preloaded at open (no cold read ever, at the cost of a full scan at start; a synthetic
  // store computes them, on the GPU in place); otherwise a CLOCK cache of this size fills on
  // misses. 0 serves every row from RocksDB (and its block cache).
  int64_t hot_capacity_bytes = 4ll << 30;
  // With a GPU device: lookups on the device at once (streams, each with its own pinned buffers);
  // further lookups wait for a stream. See GpuHotTierOptions::num_streams.
  int gpu_streams = 4;
  // Verify each block's CRC-32C against the manifest while preloading (free: the rows are read
  // anyway). Without a full preload no scan is done and RocksDB's own block checksums guard reads.
  bool verify_block_checksums = true;
};

// What one lookup touched.
struct LookupStats {
  int64_t hot_rows = 0;   // selections served by the hot tier
  int64_t cold_rows = 0;  // selections read from RocksDB
  double cold_read_seconds = 0;
  double device_seconds = 0;  // GPU tier: copies and kernels of the lookup, as the host waited
};

// The hot tier as Info reports it.
struct HotTierInfo {
  std::string kind;  // "full", "clock", "none"; "gpu-full", "gpu-clock", "gpu-none" on a GPU
  std::string device;  // "cpu", "cuda:0"
  int64_t capacity_bytes = 0;
  int64_t bytes_used = 0;
  bool complete = false;  // every row resident: lookups never miss
};

// Per-call buffers; reuse one per thread to avoid allocations.
struct LookupScratch {
  std::vector<RowId> ids;
  std::vector<const uint8_t*> rows;
  std::vector<PinHandle> handles;
  std::vector<uint8_t> pinned;     // 1 where rows[i] is a pinned hot row
  std::vector<uint8_t> miss_data;  // cold rows read for this call
  std::vector<int64_t> slots;      // GPU tier: slot of each selection (pinned hits), or -1
  std::vector<int64_t> promote;    // GPU tier: slot reserved for each missed row, or -1
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
  HotTierInfo hot_info() const;
  int width() const { return manifest_.blocks[0].width(); }

  // The lookup in two steps so that a caller can answer all-hot lookups inline and hand only
  // those with misses to a thread that may block on disk:
  // PinHot pins the hot rows and returns the number of misses; it never blocks on I/O.
  int PinHot(const DecodedLookup& lookup, LookupScratch* scratch) const;
  // Reads the misses from RocksDB or computes them (synthetic store), admits them to the hot tier
  // (on a GPU: promotes them into slots), pools into `out`
  // ([T, E, width] float32, overwritten) and unpins. Call exactly once after PinHot.
  absl::Status Complete(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                        LookupStats* stats) const;
  // PinHot + Complete.
  absl::Status Lookup(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                      LookupStats* stats) const;

 private:
  ValueStore() = default;
  // Every stored row in block order: sink(block index, row in block, bytes); checks the blocks'
  // checksums when asked. Not for a synthetic store (nothing stored).
  absl::Status ScanRows(const std::function<void(int, int64_t, const uint8_t*)>& sink);
  // Rows that missed the hot tier, read from RocksDB or computed: sink(i, bytes) for reads[i].
  absl::Status ReadMisses(const std::vector<ColdStore::RowRead>& reads,
                          const std::function<void(size_t, const uint8_t*)>& sink) const;
  absl::Status OpenHostTier();
  // value_store_gpu.cc: the GPU tier.
  absl::Status OpenGpuTier(const DeviceSpec& device);
  int PinHotGpu(const DecodedLookup& lookup, LookupScratch* scratch) const;
  absl::Status CompleteGpu(const DecodedLookup& lookup, LookupScratch* scratch, float* out,
                           LookupStats* stats) const;
  // Distinct missed rows of a lookup (scratch->rows or scratch->slots say which missed) into
  // scratch->miss_data; miss_of[s] = the index of selection s's row there (-1 for a hit).
  absl::Status FetchMisses(const DecodedLookup& lookup, LookupScratch* scratch,
                           const std::vector<uint8_t>& missed, std::vector<int>* miss_of,
                           std::vector<RowId>* miss_ids, LookupStats* stats) const;

  StoreManifest manifest_;
  ValueStoreOptions options_;
  MemoryMetrics* metrics_ = nullptr;
  std::unique_ptr<ColdStore> cold_;  // null for a synthetic store
  std::unique_ptr<HotTier> hot_;     // host tier (device cpu)
  // GPU tier: device rows, and which row is in which slot (null when every row is resident, at
  // slot gpu_block_slot_[block] + row in block).
  std::unique_ptr<GpuHotTier> gpu_;
  std::unique_ptr<SlotMap> gpu_slots_;
  std::vector<int64_t> gpu_block_slot_;
  std::string device_name_ = "cpu";
};

}  // namespace ultramem::memory
