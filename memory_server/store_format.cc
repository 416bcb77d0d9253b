// Implementation of memory_server/store_format.h.
#include "memory_server/store_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ultramem::memory {
namespace {

void PutBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetBigEndian(absl::string_view in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status FsyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return ErrnoError("open", path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync", path);
  return absl::OkStatus();
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

size_t StoreDTypeSize(StoreDType dtype) { return dtype == StoreDType::kF32 ? 4 : 2; }

absl::string_view StoreDTypeName(StoreDType dtype) {
  return dtype == StoreDType::kF32 ? "F32" : "BF16";
}

absl::StatusOr<StoreDType> ParseStoreDType(absl::string_view name) {
  if (name == "F32" || name == "f32") return StoreDType::kF32;
  if (name == "BF16" || name == "bf16") return StoreDType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("unknown store dtype '", name, "' (F32 or BF16)"));
}

size_t StoreManifest::RowBytes() const {
  if (blocks.empty()) return 0;
  return static_cast<size_t>(blocks[0].width()) * StoreDTypeSize(dtype);
}

int64_t StoreManifest::TotalBytes() const {
  int64_t rows = 0;
  for (const BlockSpec& b : blocks) rows += b.num_rows();
  return rows * static_cast<int64_t>(RowBytes());
}

const BlockSpec* StoreManifest::FindBlock(int layer) const {
  for (const BlockSpec& b : blocks) {
    if (b.layer == layer) return &b;
  }
  return nullptr;
}

std::string ManifestToJson(const StoreManifest& m) {
  nlohmann::json j;
  j["format_version"] = m.format_version;
  j["model_id"] = m.model_id;
  j["version"] = m.version;
  j["source"] = m.source;
  j["num_rows"] = m.num_rows;
  j["expand"] = m.expand;
  j["value_dim"] = m.value_dim;
  j["cores"] = m.cores;
  j["num_memory_layers"] = m.num_memory_layers;
  j["dtype"] = std::string(StoreDTypeName(m.dtype));
  j["rows_per_key"] = m.rows_per_key;
  if (m.synthetic) {
    j["synthetic_values"] = {{"seed", m.synthetic->seed},
                             {"scale", static_cast<double>(m.synthetic->scale)}};
  }
  j["blocks"] = nlohmann::json::array();
  for (const BlockSpec& b : m.blocks) {
    j["blocks"].push_back({{"layer", b.layer},
                           {"row_begin", b.row_begin},
                           {"row_end", b.row_end},
                           {"col_begin", b.col_begin},
                           {"col_end", b.col_end},
                           {"crc32c", b.crc32c}});
  }
  return j.dump(2) + "\n";
}

absl::StatusOr<StoreManifest> ManifestFromJson(absl::string_view json, absl::string_view where) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  }
  StoreManifest m;
  try {
    m.format_version = j.at("format_version").get<int>();
    m.model_id = j.at("model_id").get<std::string>();
    m.version = j.at("version").get<std::string>();
    m.source = j.value("source", "");
    m.num_rows = j.at("num_rows").get<int64_t>();
    m.expand = j.at("expand").get<int>();
    m.value_dim = j.at("value_dim").get<int>();
    m.cores = j.at("cores").get<int>();
    m.num_memory_layers = j.at("num_memory_layers").get<int>();
    auto dtype = ParseStoreDType(j.at("dtype").get<std::string>());
    if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
    m.dtype = *dtype;
    m.rows_per_key = j.at("rows_per_key").get<int>();
    if (j.contains("synthetic_values")) {
      const auto& sv = j.at("synthetic_values");
      m.synthetic = SyntheticValues{sv.at("seed").get<uint64_t>(),
                                    static_cast<float>(sv.at("scale").get<double>())};
    }
    for (const auto& b : j.at("blocks")) {
      BlockSpec s;
      s.layer = b.at("layer").get<int>();
      s.row_begin = b.at("row_begin").get<int64_t>();
      s.row_end = b.at("row_end").get<int64_t>();
      s.col_begin = b.at("col_begin").get<int>();
      s.col_end = b.at("col_end").get<int>();
      s.crc32c = b.at("crc32c").get<uint32_t>();
      m.blocks.push_back(s);
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", e.what()));
  }
  if (m.format_version != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": format_version ", m.format_version, " (this build reads 1)"));
  }
  if (m.num_rows <= 0 || m.expand <= 0 || m.value_dim <= 0 || m.cores <= 0 ||
      m.value_dim % m.cores != 0 || m.rows_per_key <= 0 || m.blocks.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": inconsistent dimensions or no blocks"));
  }
  if (m.synthetic && (m.dtype != StoreDType::kBF16 || !(m.synthetic->scale > 0))) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": a synthetic store must be BF16 with a positive scale"));
  }
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const BlockSpec& b = m.blocks[i];
    if (b.layer < 0 || b.layer >= m.num_memory_layers || b.row_begin < 0 ||
        b.row_end > m.num_rows || b.row_begin >= b.row_end || b.col_begin < 0 ||
        b.col_end > m.value_dim || b.col_begin >= b.col_end ||
        b.col_begin != m.blocks[0].col_begin || b.col_end != m.blocks[0].col_end ||
        (i > 0 && b.layer <= m.blocks[i - 1].layer)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": block ", i, " is inconsistent"));
    }
  }
  return m;
}

std::string VersionDir(const std::string& store_dir, const std::string& version) {
  return absl::StrCat(store_dir, "/versions/", version);
}
std::string VersionDbDir(const std::string& store_dir, const std::string& version) {
  return absl::StrCat(VersionDir(store_dir, version), "/db");
}
std::string ManifestPath(const std::string& store_dir, const std::string& version) {
  return absl::StrCat(VersionDir(store_dir, version), "/MANIFEST.json");
}
std::string CurrentPath(const std::string& store_dir) { return store_dir + "/CURRENT"; }

absl::Status CheckVersionName(absl::string_view version) {
  bool ok = !version.empty() && version.size() <= 64 && version != "." && version != "..";
  for (char c : version) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad store version name '", version, "': use 1-64 of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return ErrnoError("create", tmp);
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return ErrnoError("write", tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return ErrnoError("fsync", tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("rename to", path);
  return FsyncPath(Dirname(path), /*directory=*/true);
}

absl::StatusOr<std::string> ReadCurrent(const std::string& store_dir) {
  auto text = ReadFileToString(CurrentPath(store_dir));
  if (!text.ok()) {
    return absl::NotFoundError(
        absl::StrCat("store ", store_dir, " has no CURRENT: no version has been published"));
  }
  std::string version = *text;
  while (!version.empty() && (version.back() == '\n' || version.back() == ' ')) version.pop_back();
  absl::Status valid = CheckVersionName(version);
  if (!valid.ok()) {
    return absl::DataLossError(absl::StrCat(CurrentPath(store_dir), ": ", valid.message()));
  }
  return version;
}

absl::Status WriteCurrent(const std::string& store_dir, const std::string& version) {
  return WriteFileAtomically(CurrentPath(store_dir), version + "\n");
}

absl::StatusOr<StoreManifest> ReadManifest(const std::string& store_dir,
                                           const std::string& version) {
  struct stat st;
  const std::string dir = VersionDir(store_dir, version);
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("store version ", version, " does not exist (", dir, ")"));
  }
  const std::string path = ManifestPath(store_dir, version);
  auto text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store version ", version, " has no MANIFEST.json: its import did not finish; rerun the "
        "same ultramem-import command to resume it"));
  }
  auto manifest = ManifestFromJson(*text, path);
  if (!manifest.ok()) return manifest.status();
  if (manifest->version != version) {
    return absl::DataLossError(absl::StrCat(path, " names version ", manifest->version));
  }
  return manifest;
}

std::string RowKey(int layer, uint64_t key_index) {
  std::string key;
  key.reserve(13);
  key.push_back('R');
  PutBigEndian(&key, static_cast<uint32_t>(layer), 4);
  PutBigEndian(&key, key_index, 8);
  return key;
}

std::string ProgressKey(int layer, uint64_t chunk) {
  std::string key;
  key.reserve(13);
  key.push_back('P');
  PutBigEndian(&key, static_cast<uint32_t>(layer), 4);
  PutBigEndian(&key, chunk, 8);
  return key;
}

bool ParseRowKey(absl::string_view key, int* layer, uint64_t* key_index) {
  if (key.size() != 13 || key[0] != 'R') return false;
  *layer = static_cast<int>(GetBigEndian(key.substr(1), 4));
  *key_index = GetBigEndian(key.substr(5), 8);
  return true;
}

}  // namespace ultramem::memory
