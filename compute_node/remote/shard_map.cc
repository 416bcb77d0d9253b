// Implementation of compute_node/remote/shard_map.h.
#include "compute_node/remote/shard_map.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace ultramem {

std::string ResolvedBlock::Describe(const v1::ShardMap& map) const {
  return absl::StrCat("shard '", map.shards(shard).name(), "' (layer ", layer, " rows [", row_begin,
                      ", ", row_end, ") cols [", col_begin, ", ", col_end, "))");
}

namespace {
class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first.empty()) first = absl::StrCat("line ", line + 1, " column ", column + 1, ": ", message);
  }
  std::string first;
};
}  // namespace

absl::StatusOr<v1::ShardMap> ParseShardMap(const std::string& text, const std::string& file_name) {
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors;
  parser.RecordErrorsTo(&errors);
  v1::ShardMap map;
  if (!parser.ParseFromString(text, &map)) {
    return absl::InvalidArgumentError(absl::StrCat("shard map ", file_name, ": ", errors.first));
  }
  return map;
}

absl::StatusOr<v1::ShardMap> ReadShardMap(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read shard map ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseShardMap(ss.str(), path);
}

absl::StatusOr<std::vector<ResolvedBlock>> ResolveShardMap(const v1::ShardMap& map,
                                                           const ModelConfig& config) {
  if (!config.memory) return absl::InvalidArgumentError("the model has no memory layers to shard");
  const MemoryConfig& mc = *config.memory;
  const int J = config.NumMemoryLayers();
  const int64_t N = mc.NumRows();
  if (map.model_id().empty()) return absl::InvalidArgumentError("shard map: model_id is required");
  std::vector<ResolvedBlock> blocks;
  for (int s = 0; s < map.shards_size(); ++s) {
    const v1::Shard& shard = map.shards(s);
    const std::string where = absl::StrCat("shard map: shard ", s, " '", shard.name(), "'");
    if (shard.replicas_size() == 0) return absl::InvalidArgumentError(where + " has no replicas");
    if (shard.block_size() == 0) return absl::InvalidArgumentError(where + " has no block");
    for (int bi = 0; bi < shard.block_size(); ++bi) {
      const v1::ShardBlock& b = shard.block(bi);
      std::vector<int> layers(b.layers().begin(), b.layers().end());
      if (layers.empty()) {
        for (int j = 0; j < J; ++j) layers.push_back(j);
      }
      ResolvedBlock r;
      r.shard = s;
      r.row_begin = b.row_begin();
      r.row_end = b.row_end() == 0 ? N : b.row_end();
      r.col_begin = static_cast<int>(b.col_begin());
      r.col_end = b.col_end() == 0 ? mc.value_dim : static_cast<int>(b.col_end());
      if (r.row_begin < 0 || r.row_begin >= r.row_end || r.row_end > N || r.col_begin >= r.col_end ||
          r.col_end > mc.value_dim) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " block ", bi, ": rows [", r.row_begin, ", ", r.row_end, ") x cols [", r.col_begin,
            ", ", r.col_end, ") is empty or outside [0, ", N, ") x [0, ", mc.value_dim, ")"));
      }
      for (int j : layers) {
        if (j < 0 || j >= J) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, " block ", bi, ": memory layer ", j, " does not exist (", J, " layers)"));
        }
        r.layer = j;
        blocks.push_back(r);
      }
    }
  }
  // Exact tiling per layer: no pairwise overlap and total area N·Dv.
  for (int j = 0; j < J; ++j) {
    std::vector<const ResolvedBlock*> mine;
    for (const auto& b : blocks) {
      if (b.layer == j) mine.push_back(&b);
    }
    int64_t area = 0;
    for (size_t a = 0; a < mine.size(); ++a) {
      area += (mine[a]->row_end - mine[a]->row_begin) * (mine[a]->col_end - mine[a]->col_begin);
      for (size_t c = a + 1; c < mine.size(); ++c) {
        const ResolvedBlock &x = *mine[a], &y = *mine[c];
        if (x.row_begin < y.row_end && y.row_begin < x.row_end && x.col_begin < y.col_end &&
            y.col_begin < x.col_end) {
          return absl::InvalidArgumentError(absl::StrCat("shard map: ", x.Describe(map), " overlaps ",
                                                         y.Describe(map)));
        }
      }
    }
    if (area != N * mc.value_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shard map: the blocks of memory layer ", j, " cover ", area, " of its ", N * mc.value_dim,
          " values (", N, " rows x ", mc.value_dim, " columns): some rows or columns have no shard"));
    }
  }
  std::stable_sort(blocks.begin(), blocks.end(), [](const ResolvedBlock& a, const ResolvedBlock& b) {
    return a.layer < b.layer;
  });
  return blocks;
}

}  // namespace ultramem
