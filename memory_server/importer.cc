// Implementation of memory_server/importer.h.
#include "memory_server/importer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/dtype.h"
#include "common/log.h"
#include "common/status.h"
#include "memory_server/crc32c.h"
#include "memory_server/rocks_status.h"
#include "nlohmann/json.hpp"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace ultramem::memory {
namespace {

using Clock = std::chrono::steady_clock;

// Redraws one status line on a terminal at most every 100 ms.
class Progress {
 public:
  Progress(bool enabled, int64_t total_rows, int64_t row_bytes)
      : enabled_(enabled), total_rows_(total_rows), row_bytes_(row_bytes), start_(Clock::now()) {}

  void Update(int64_t done_rows, int64_t new_rows, bool final) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!final && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double secs = std::max(1e-6, std::chrono::duration<double>(now - start_).count());
    const double rate = new_rows / secs;
    const double eta = rate > 0 ? (total_rows_ - done_rows) / rate : 0;
    std::fprintf(stderr, "\r  %lld/%lld rows (%.1f%%)  %.0f rows/s  %.1f MiB written  ETA %d:%02d   ",
                 static_cast<long long>(done_rows), static_cast<long long>(total_rows_),
                 total_rows_ ? 100.0 * done_rows / total_rows_ : 100.0, rate,
                 new_rows * static_cast<double>(row_bytes_) / (1 << 20), static_cast<int>(eta) / 60,
                 static_cast<int>(eta) % 60);
    if (final) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  int64_t total_rows_, row_bytes_;
  Clock::time_point start_, last_{};
};

std::string DefaultModelId(const std::string& checkpoint_dir) {
  std::string dir = checkpoint_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::string base = std::filesystem::path(dir).filename().string();
  auto config = ReadFileToString(dir + "/config.json");
  uint32_t crc = config.ok() ? Crc32c(0, config->data(), config->size()) : 0;
  return absl::StrFormat("%s-%08x", base, crc);
}

// The parts of a plan that must match for a resume (everything that shapes the stored bytes).
std::string PlanJson(const StoreManifest& m, int64_t chunk_rows) {
  nlohmann::json j;
  j["model_id"] = m.model_id;
  j["num_rows"] = m.num_rows;
  j["expand"] = m.expand;
  j["value_dim"] = m.value_dim;
  j["cores"] = m.cores;
  j["dtype"] = std::string(StoreDTypeName(m.dtype));
  j["rows_per_key"] = m.rows_per_key;
  j["chunk_rows"] = chunk_rows;
  if (m.synthetic) j["synthetic_values"] = {m.synthetic->seed, static_cast<double>(m.synthetic->scale)};
  for (const BlockSpec& b : m.blocks) {
    j["blocks"].push_back({b.layer, b.row_begin, b.row_end, b.col_begin, b.col_end});
  }
  return j.dump();
}

bool SamePlan(const StoreManifest& a, const StoreManifest& b) {
  return PlanJson(a, 0) == PlanJson(b, 0);
}

// Converts float rows to the stored dtype.
void Encode(const float* src, size_t count, StoreDType dtype, std::string* out) {
  if (dtype == StoreDType::kF32) {
    out->assign(reinterpret_cast<const char*>(src), count * 4);
    return;
  }
  out->resize(count * 2);
  auto* dst = reinterpret_cast<uint16_t*>(out->data());
  for (size_t i = 0; i < count; ++i) dst[i] = F32ToBf16(src[i]);
}

class Importer {
 public:
  explicit Importer(const ImportOptions& options) : options_(options) {}
  absl::StatusOr<ImportResult> Run();

 private:
  absl::StatusOr<StoreManifest> Plan(const Checkpoint& checkpoint);
  // Reads the stored bytes of rows [r0, r1) of `block` back (in row order).
  absl::StatusOr<std::string> ReadBack(const BlockSpec& block, int64_t r0, int64_t r1);
  // Writes MANIFEST.json (the version is complete) and switches CURRENT when asked.
  absl::StatusOr<ImportResult> Publish(Clock::time_point start, ImportResult result);

  const ImportOptions& options_;
  StoreManifest manifest_;
  std::unique_ptr<rocksdb::DB> db_;
};

absl::StatusOr<StoreManifest> Importer::Plan(const Checkpoint& checkpoint) {
  const ModelConfig& config = checkpoint.config();
  if (!config.memory.has_value() || config.NumMemoryLayers() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", options_.checkpoint_dir, " has no memory layers to import"));
  }
  const MemoryConfig& mem = *config.memory;
  StoreManifest m;
  m.model_id = options_.model_id.empty() ? DefaultModelId(options_.checkpoint_dir) : options_.model_id;
  m.version = options_.version;
  m.source = std::filesystem::absolute(options_.checkpoint_dir).lexically_normal().string();
  m.num_rows = mem.NumRows();
  m.expand = mem.value_expand;
  m.value_dim = mem.value_dim;
  m.cores = mem.tucker_cores;
  m.num_memory_layers = config.NumMemoryLayers();

  std::vector<int> layers = options_.layers;
  if (layers.empty()) {
    for (int j = 0; j < m.num_memory_layers; ++j) layers.push_back(j);
  }
  std::sort(layers.begin(), layers.end());
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 0 || layers[i] >= m.num_memory_layers) {
      return absl::InvalidArgumentError(absl::StrCat("memory layer ", layers[i], " does not exist: ",
                                                     "the model has ", m.num_memory_layers));
    }
    if (i > 0 && layers[i] == layers[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat("memory layer ", layers[i], " named twice"));
    }
  }
  const int64_t row_begin = options_.row_begin;
  const int64_t row_end = options_.row_end < 0 ? m.num_rows : options_.row_end;
  const int col_begin = options_.col_begin;
  const int col_end = options_.col_end < 0 ? m.value_dim : options_.col_end;
  if (row_begin < 0 || row_end > m.num_rows || row_begin >= row_end) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows [", row_begin, ", ", row_end, ") are not a non-empty range in [0, N = ",
                     m.num_rows, ")"));
  }
  if (col_begin < 0 || col_end > m.value_dim || col_begin >= col_end) {
    return absl::InvalidArgumentError(
        absl::StrCat("columns [", col_begin, ", ", col_end, ") are not a non-empty range in [0, Dv = ",
                     m.value_dim, ")"));
  }
  for (int layer : layers) {
    m.blocks.push_back({layer, row_begin, row_end, col_begin, col_end, 0});
  }
  // dtype
  m.synthetic = checkpoint.synthetic_values();
  if (m.synthetic) {
    // The function yields bf16 values; an F32 store of them would only double the bytes.
    if (options_.store_dtype != "auto" && options_.store_dtype != "bf16" &&
        options_.store_dtype != "BF16") {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", options_.checkpoint_dir, " declares synthetic values (bf16): a synthetic "
          "store is BF16, not --store_dtype=", options_.store_dtype));
    }
    m.dtype = StoreDType::kBF16;
  } else if (options_.store_dtype == "auto") {
    UM_ASSIGN_OR_RETURN(TensorView values,
                        checkpoint.Get(absl::StrCat("memory.", layers[0], ".values")));
    m.dtype = values.entry->dtype == DType::kBF16 ? StoreDType::kBF16 : StoreDType::kF32;
  } else {
    UM_ASSIGN_OR_RETURN(m.dtype, ParseStoreDType(options_.store_dtype));
  }
  const int64_t row_bytes = static_cast<int64_t>(m.RowBytes());
  m.rows_per_key = static_cast<int>(std::max<int64_t>(1, options_.target_value_bytes / row_bytes));
  return m;
}

absl::StatusOr<std::string> Importer::ReadBack(const BlockSpec& block, int64_t r0, int64_t r1) {
  const int64_t per_key = manifest_.rows_per_key;
  const uint64_t k0 = static_cast<uint64_t>((r0 - block.row_begin) / per_key);
  const uint64_t k1 = static_cast<uint64_t>((r1 - block.row_begin + per_key - 1) / per_key);
  std::string bytes;
  rocksdb::ReadOptions read;
  read.verify_checksums = true;
  read.fill_cache = false;
  for (uint64_t k = k0; k < k1; ++k) {
    std::string value;
    UM_RETURN_IF_ERROR(FromRocks(db_->Get(read, RowKey(block.layer, k), &value),
                                 absl::StrCat("reading back key ", k, " of layer ", block.layer)));
    bytes += value;
  }
  return bytes;
}

absl::StatusOr<ImportResult> Importer::Run() {
  const auto start = Clock::now();
  UM_RETURN_IF_ERROR(CheckVersionName(options_.version));
  if (options_.chunk_rows <= 0 || options_.target_value_bytes <= 0) {
    return absl::InvalidArgumentError("chunk_rows and target_value_bytes must be positive");
  }
  CheckpointOptions checkpoint_options;
  checkpoint_options.check_shuffle_index = false;  // the values never need it
  UM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint,
                      Checkpoint::Open(options_.checkpoint_dir, checkpoint_options));
  UM_ASSIGN_OR_RETURN(manifest_, Plan(*checkpoint));
  const int64_t per_key = manifest_.rows_per_key;
  const int64_t chunk_rows = (options_.chunk_rows + per_key - 1) / per_key * per_key;
  const std::string plan = PlanJson(manifest_, chunk_rows);

  ImportResult result;
  // A complete version: nothing to write.
  auto existing = ReadManifest(options_.store_dir, options_.version);
  if (existing.ok()) {
    if (!SamePlan(*existing, manifest_)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "store version ", options_.version, " is complete and holds a different import; pick a "
          "new --version"));
    }
    result.manifest = *existing;
    result.already_complete = true;
    if (options_.activate) UM_RETURN_IF_ERROR(WriteCurrent(options_.store_dir, options_.version));
    return result;
  }

  std::error_code ec;
  if (manifest_.synthetic &&
      std::filesystem::exists(VersionDbDir(options_.store_dir, options_.version), ec)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store version ", options_.version, " holds an unfinished import of stored rows; pick a "
        "new --version for the synthetic store"));
  }
  std::filesystem::create_directories(VersionDir(options_.store_dir, options_.version), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("creating ", VersionDir(options_.store_dir, options_.version),
                                            ": ", ec.message()));
  }
  if (manifest_.synthetic) return Publish(start, std::move(result));
  rocksdb::Options rocks;
  FillRocksOptions(options_.cold, &rocks);
  rocks.create_if_missing = true;
  rocksdb::DB* db = nullptr;
  const std::string db_path = VersionDbDir(options_.store_dir, options_.version);
  UM_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(rocks, db_path, &db),
                               absl::StrCat("opening RocksDB ", db_path, " for import")));
  db_.reset(db);

  // The plan of an unfinished import must match.
  std::string stored_plan;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kPlanKey, &stored_plan);
  if (s.ok()) {
    if (stored_plan != plan) {
      return absl::FailedPreconditionError(absl::StrCat(
          "store version ", options_.version, " holds an unfinished import of a different plan (",
          stored_plan, "); rerun that import, or pick a new --version"));
    }
    UM_LOG_INFO("resuming the import of version ", options_.version);
  } else if (s.IsNotFound()) {
    rocksdb::WriteOptions sync;
    sync.sync = true;
    UM_RETURN_IF_ERROR(FromRocks(db_->Put(sync, kPlanKey, plan), "writing the import plan"));
  } else {
    UM_RETURN_IF_ERROR(FromRocks(s, "reading the import plan"));
  }

  int64_t total_rows = 0;
  for (const BlockSpec& b : manifest_.blocks) total_rows += b.num_rows();
  const size_t row_bytes = manifest_.RowBytes();
  Progress progress(options_.show_progress, total_rows, static_cast<int64_t>(row_bytes));
  int64_t done_rows = 0, new_rows = 0;
  std::vector<float> buffer;
  std::string encoded;

  for (BlockSpec& block : manifest_.blocks) {
    const std::string tensor = absl::StrCat("memory.", block.layer, ".values");
    const int width = block.width();
    uint32_t block_crc = 0;
    uint64_t chunk = 0;
    for (int64_t r0 = block.row_begin; r0 < block.row_end; r0 += chunk_rows, ++chunk) {
      const int64_t r1 = std::min(block.row_end, r0 + chunk_rows);
      const int64_t n = r1 - r0;
      // Source bytes and their checksum.
      buffer.resize(static_cast<size_t>(n) * width);
      UM_RETURN_IF_ERROR(checkpoint->ReadF32Block(tensor, r0, r1, block.col_begin, block.col_end,
                                                  buffer.data()));
      Encode(buffer.data(), buffer.size(), manifest_.dtype, &encoded);
      const uint32_t crc = Crc32c(0, encoded.data(), encoded.size());

      std::string recorded;
      rocksdb::Status p = db_->Get(rocksdb::ReadOptions(), ProgressKey(block.layer, chunk), &recorded);
      if (!p.ok() && !p.IsNotFound()) UM_RETURN_IF_ERROR(FromRocks(p, "reading import progress"));
      bool committed = false;
      if (p.ok()) {
        // Done by an earlier run: trust it only if it reads back as the source.
        UM_ASSIGN_OR_RETURN(std::string stored, ReadBack(block, r0, r1));
        if (stored.size() == encoded.size() && Crc32c(0, stored.data(), stored.size()) == crc) {
          committed = true;
          ++result.chunks_resumed;
        } else {
          UM_LOG_WARNING("layer ", block.layer, " chunk ", chunk,
                         " was recorded done but reads back wrong; writing it again");
        }
      }
      if (!committed) {
        rocksdb::WriteBatch batch;
        for (int64_t k0 = r0; k0 < r1; k0 += per_key) {
          const int64_t k1 = std::min(r1, k0 + per_key);
          batch.Put(RowKey(block.layer, static_cast<uint64_t>((k0 - block.row_begin) / per_key)),
                    rocksdb::Slice(encoded.data() + (k0 - r0) * row_bytes, (k1 - k0) * row_bytes));
        }
        char crc_bytes[4];
        std::memcpy(crc_bytes, &crc, 4);
        batch.Put(ProgressKey(block.layer, chunk), rocksdb::Slice(crc_bytes, 4));
        UM_RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &batch),
                                     absl::StrCat("writing chunk ", chunk, " of layer ", block.layer)));
        // The per-block check: what RocksDB returns must be what we meant to store.
        UM_ASSIGN_OR_RETURN(std::string stored, ReadBack(block, r0, r1));
        if (stored.size() != encoded.size() || Crc32c(0, stored.data(), stored.size()) != crc) {
          return absl::DataLossError(absl::StrCat("chunk ", chunk, " of layer ", block.layer,
                                                  " reads back with a wrong checksum"));
        }
        ++result.chunks_written;
        result.bytes_written += static_cast<int64_t>(encoded.size());
        new_rows += n;
      }
      block_crc = Crc32c(block_crc, encoded.data(), encoded.size());
      done_rows += n;
      progress.Update(done_rows, new_rows, false);
      if (!committed && options_.on_chunk_committed) options_.on_chunk_committed(result.chunks_written);
    }
    block.crc32c = block_crc;
  }
  progress.Update(done_rows, new_rows, true);

  // Durable, compacted into one sorted run (one filter probe per point read), then published.
  rocksdb::FlushOptions flush;
  flush.wait = true;
  UM_RETURN_IF_ERROR(FromRocks(db_->Flush(flush), "flushing the store"));
  rocksdb::CompactRangeOptions compact;
  compact.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForceOptimized;
  UM_RETURN_IF_ERROR(FromRocks(db_->CompactRange(compact, nullptr, nullptr), "compacting the store"));
  UM_RETURN_IF_ERROR(FromRocks(db_->SyncWAL(), "syncing the store"));
  UM_RETURN_IF_ERROR(FromRocks(db_->Close(), "closing the store"));
  db_.reset();
  return Publish(start, std::move(result));
}

absl::StatusOr<ImportResult> Importer::Publish(Clock::time_point start, ImportResult result) {
  UM_RETURN_IF_ERROR(WriteFileAtomically(ManifestPath(options_.store_dir, options_.version),
                                         ManifestToJson(manifest_)));
  if (options_.activate) UM_RETURN_IF_ERROR(WriteCurrent(options_.store_dir, options_.version));
  result.manifest = manifest_;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace

absl::StatusOr<ImportResult> RunImport(const ImportOptions& options) {
  Importer importer(options);
  return importer.Run();
}

}  // namespace ultramem::memory
