// The shard map (proto/ultramem/v1/shard_map.proto): reading it and checking that its blocks tile
// every memory layer of a model exactly once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "ultramem/v1/shard_map.pb.h"

namespace ultramem {

// One block of one memory layer, resolved (no zero-means-all fields left).
struct ResolvedBlock {
  int shard = 0;  // index into ShardMap.shards
  int layer = 0;
  int64_t row_begin = 0, row_end = 0;
  int col_begin = 0, col_end = 0;

  std::string Describe(const v1::ShardMap& map) const;  // "shard 'a' (layer 0 rows [0, 64) cols [0, 24))"
};

// Parses protobuf text format. InvalidArgument naming `file_name` and the line on a syntax error.
absl::StatusOr<v1::ShardMap> ParseShardMap(const std::string& text, const std::string& file_name);
absl::StatusOr<v1::ShardMap> ReadShardMap(const std::string& path);

// Resolves every block against `config` and checks: no model_id missing, every shard has a
// replica, ranges inside [0, N) x [0, Dv) and non-empty, layers exist, and the blocks of each
// memory layer cover it exactly once (no gap, no overlap). InvalidArgument with the offending
// shard and block otherwise. Result ordered by (layer, shard).
absl::StatusOr<std::vector<ResolvedBlock>> ResolveShardMap(const v1::ShardMap& map,
                                                           const ModelConfig& config);

}  // namespace ultramem
