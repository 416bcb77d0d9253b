// Implementation of memory_server/cold_store.h.
#include "memory_server/cold_store.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "memory_server/rocks_status.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"

namespace ultramem::memory {

void FillRocksOptions(const ColdStoreOptions& options, rocksdb::Options* out) {
  rocksdb::BlockBasedTableOptions table;
  table.block_size = static_cast<size_t>(options.block_size_bytes);
  // XXH3 block checksums: verified on every cold read, and several times cheaper than the
  // software CRC-32C this RocksDB build falls back to.
  table.checksum = rocksdb::kXXH3;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(options.bloom_bits_per_key, false));
  table.whole_key_filtering = true;
  // Pinned: each table reader loads its index and filter once at open and keeps them on the heap
  // (the store is read-only and every file stays open). Else they compete in the block cache, and
  // a point read that misses them re-reads and re-checksums a whole index block.
  table.cache_index_and_filter_blocks = !options.pin_index_and_filter_blocks;
  table.optimize_filters_for_memory = true;
  // Point reads only: a hash index inside each data block saves the binary search.
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  if (options.block_cache_bytes > 0) {
    table.block_cache = rocksdb::NewLRUCache(static_cast<size_t>(options.block_cache_bytes));
  } else {
    table.no_block_cache = true;
  }
  out->table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Float rows barely compress; decompression would only cost read latency.
  out->compression = rocksdb::kNoCompression;
  out->bottommost_compression = rocksdb::kNoCompression;
  out->max_open_files = options.max_open_files;
  out->allow_mmap_reads = options.use_mmap_reads;
  // Writes happen only at import time, in large sorted batches.
  out->write_buffer_size = 64 << 20;
  out->target_file_size_base = 256 << 20;
  out->level_compaction_dynamic_level_bytes = true;
}

ColdStore::~ColdStore() = default;

absl::StatusOr<std::unique_ptr<ColdStore>> ColdStore::Open(const std::string& store_dir,
                                                           const StoreManifest& manifest,
                                                           const ColdStoreOptions& options) {
  std::unique_ptr<ColdStore> store(new ColdStore());
  store->manifest_ = manifest;
  store->options_ = options;
  rocksdb::Options rocks;
  FillRocksOptions(options, &rocks);
  rocks.create_if_missing = false;
  rocksdb::DB* db = nullptr;
  const std::string path = VersionDbDir(store_dir, manifest.version);
  UM_RETURN_IF_ERROR(FromRocks(rocksdb::DB::OpenForReadOnly(rocks, path, &db),
                               absl::StrCat("opening RocksDB ", path)));
  store->db_.reset(db);
  return store;
}

absl::Status ColdStore::ReadRows(const std::vector<RowRead>& rows,
                                 const std::function<void(size_t, const uint8_t*)>& sink) const {
  if (rows.empty()) return absl::OkStatus();
  const size_t row_bytes = manifest_.RowBytes();
  const int64_t per_key = manifest_.rows_per_key;
  // Distinct keys, sorted (MultiGet is fastest on sorted input).
  struct Want {
    int layer;
    uint64_t key_index;
    bool operator<(const Want& o) const {
      return layer != o.layer ? layer < o.layer : key_index < o.key_index;
    }
    bool operator==(const Want& o) const { return layer == o.layer && key_index == o.key_index; }
  };
  std::vector<Want> wants;
  wants.reserve(rows.size());
  std::vector<int64_t> block_begin(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const BlockSpec* block = manifest_.FindBlock(rows[i].layer);
    if (block == nullptr || rows[i].row < block->row_begin || rows[i].row >= block->row_end) {
      return absl::InternalError(absl::StrCat("cold read of row ", rows[i].row, " of layer ",
                                              rows[i].layer, " outside the store's blocks"));
    }
    block_begin[i] = block->row_begin;
    wants.push_back({rows[i].layer, static_cast<uint64_t>((rows[i].row - block->row_begin) / per_key)});
  }
  std::vector<Want> unique = wants;
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());

  std::vector<std::string> key_bytes(unique.size());
  std::vector<rocksdb::Slice> keys(unique.size());
  for (size_t k = 0; k < unique.size(); ++k) {
    key_bytes[k] = RowKey(unique[k].layer, unique[k].key_index);
    keys[k] = key_bytes[k];
  }
  std::vector<rocksdb::PinnableSlice> values(unique.size());
  std::vector<rocksdb::Status> statuses(unique.size());
  rocksdb::ReadOptions read;
  read.verify_checksums = options_.verify_checksums;
  // With mmap, a data block is read in place; copying it into the block cache as well would hold
  // rows twice (they are admitted to the hot tier) and churn the cache.
  read.fill_cache = !options_.use_mmap_reads;
  db_->MultiGet(read, db_->DefaultColumnFamily(), keys.size(), keys.data(), values.data(),
                statuses.data(), /*sorted_input=*/true);
  for (size_t k = 0; k < unique.size(); ++k) {
    if (statuses[k].IsNotFound()) {
      return absl::DataLossError(absl::StrCat("store ", manifest_.version, " lacks key ",
                                              unique[k].key_index, " of layer ", unique[k].layer));
    }
    UM_RETURN_IF_ERROR(FromRocks(statuses[k], absl::StrCat("reading key ", unique[k].key_index,
                                                           " of layer ", unique[k].layer)));
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    const size_t k = std::lower_bound(unique.begin(), unique.end(), wants[i]) - unique.begin();
    const int64_t in_key = (rows[i].row - block_begin[i]) % per_key;
    const size_t offset = static_cast<size_t>(in_key) * row_bytes;
    if (values[k].size() < offset + row_bytes) {
      return absl::DataLossError(absl::StrCat("store ", manifest_.version, ": short value for row ",
                                              rows[i].row, " of layer ", rows[i].layer));
    }
    sink(i, reinterpret_cast<const uint8_t*>(values[k].data()) + offset);
  }
  return absl::OkStatus();
}

absl::Status ColdStore::ScanAll(
    const std::function<void(int, int64_t, const uint8_t*)>& sink) const {
  const size_t row_bytes = manifest_.RowBytes();
  rocksdb::ReadOptions read;
  read.verify_checksums = options_.verify_checksums;
  read.fill_cache = false;
  read.readahead_size = 4 << 20;
  for (const BlockSpec& block : manifest_.blocks) {
    const uint64_t num_keys =
        static_cast<uint64_t>((block.num_rows() + manifest_.rows_per_key - 1) / manifest_.rows_per_key);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read));
    const std::string first = RowKey(block.layer, 0);
    uint64_t expected = 0;
    for (it->Seek(first); it->Valid() && expected < num_keys; it->Next(), ++expected) {
      int layer;
      uint64_t key_index;
      if (!ParseRowKey(absl::string_view(it->key().data(), it->key().size()), &layer, &key_index) || layer != block.layer ||
          key_index != expected) {
        return absl::DataLossError(absl::StrCat("store ", manifest_.version, ": layer ",
                                                block.layer, " lacks key ", expected));
      }
      const int64_t row0 = block.row_begin + static_cast<int64_t>(key_index) * manifest_.rows_per_key;
      const int64_t n = std::min<int64_t>(manifest_.rows_per_key, block.row_end - row0);
      if (it->value().size() != static_cast<size_t>(n) * row_bytes) {
        return absl::DataLossError(absl::StrCat("store ", manifest_.version, ": layer ",
                                                block.layer, " key ", key_index, " has ",
                                                it->value().size(), " bytes, want ", n * row_bytes));
      }
      const auto* data = reinterpret_cast<const uint8_t*>(it->value().data());
      for (int64_t r = 0; r < n; ++r) sink(block.layer, row0 + r, data + r * row_bytes);
    }
    UM_RETURN_IF_ERROR(FromRocks(it->status(), absl::StrCat("scanning layer ", block.layer)));
    if (expected != num_keys) {
      return absl::DataLossError(absl::StrCat("store ", manifest_.version, ": layer ", block.layer,
                                              " has ", expected, " keys, want ", num_keys));
    }
  }
  return absl::OkStatus();
}

int64_t ColdStore::CacheUsageBytes() const {
  uint64_t usage = 0;
  db_->GetIntProperty("rocksdb.block-cache-usage", &usage);
  return static_cast<int64_t>(usage);
}

}  // namespace ultramem::memory
