// Implementation of memory_server/request_decoder.h.
#include "memory_server/request_decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ultramem::memory {
namespace {

using ultramem::v1::LookupRequest;

absl::Status SizeError(absl::string_view field, size_t have, uint64_t count, absl::string_view count_name,
                       uint64_t elem_bytes) {
  return absl::InvalidArgumentError(absl::StrCat(field, " has ", have, " bytes; want ", count_name,
                                                 " = ", count, " × ", elem_bytes, " = ",
                                                 count * elem_bytes));
}

// The token owning selection s.
int TokenOf(const DecodedLookup& d, int s) {
  if (d.uniform) return d.num_selections == 0 ? 0 : s / (d.num_selections / d.num_tokens);
  auto it = std::upper_bound(d.offsets.begin(), d.offsets.end(), s);
  return static_cast<int>(it - d.offsets.begin()) - 1;
}

std::string HeldLayers(const StoreManifest& shard) {
  std::vector<int> layers;
  for (const BlockSpec& b : shard.blocks) layers.push_back(b.layer);
  return absl::StrJoin(layers, ", ");
}

}  // namespace

absl::Status DecodeLookupRequest(const LookupRequest& request, const StoreManifest& shard,
                                 const LookupLimits& limits, DecodedLookup* out) {
  const uint64_t T = request.num_tokens();
  const uint64_t S = request.num_selections();
  if (T == 0) return absl::InvalidArgumentError("num_tokens is 0; a lookup needs at least one token");
  if (T > limits.max_batch_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("num_tokens ", T, " exceeds this server's limit of ",
                                                     limits.max_batch_tokens, " tokens per request"));
  }
  if (S > limits.max_batch_selections) {
    return absl::ResourceExhaustedError(
        absl::StrCat("num_selections ", S, " exceeds this server's limit of ",
                     limits.max_batch_selections, " selections per request"));
  }
  if (request.layer() >= static_cast<uint32_t>(shard.num_memory_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown memory layer ", request.layer(),
                                                   ": the model has ", shard.num_memory_layers,
                                                   " memory layers"));
  }
  const int layer = static_cast<int>(request.layer());
  int block_index = -1;
  for (size_t b = 0; b < shard.blocks.size(); ++b) {
    if (shard.blocks[b].layer == layer) block_index = static_cast<int>(b);
  }
  if (block_index < 0) {
    return absl::InvalidArgumentError(absl::StrCat("memory layer ", layer,
                                                   " is not held by this shard (it holds layers ",
                                                   HeldLayers(shard), ")"));
  }
  const BlockSpec& block = shard.blocks[block_index];
  if (request.num_cores() != static_cast<uint32_t>(shard.cores)) {
    return absl::InvalidArgumentError(absl::StrCat("num_cores is ", request.num_cores(),
                                                   "; the model has h = ", shard.cores,
                                                   " Tucker cores"));
  }
  const uint64_t h = shard.cores;

  uint64_t row_bytes;
  switch (request.row_type()) {
    case ultramem::v1::INDEX_TYPE_INT32: row_bytes = 4; break;
    case ultramem::v1::INDEX_TYPE_INT64: row_bytes = 8; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("row_type ", static_cast<int>(request.row_type()),
                                                     " is not INDEX_TYPE_INT32 or INDEX_TYPE_INT64"));
  }
  if (request.rows().size() != S * row_bytes) {
    return SizeError("rows", request.rows().size(), S, "num_selections", row_bytes);
  }
  if (request.groups().size() != S * 4) {
    return SizeError("groups", request.groups().size(), S, "num_selections", 4);
  }
  if (request.weights().size() != S * h * 4) {
    return SizeError("weights", request.weights().size(), S * h, "num_selections × h", 4);
  }
  switch (request.out_dtype()) {
    case ultramem::v1::DTYPE_UNSPECIFIED:
    case ultramem::v1::DTYPE_F32: out->out_bf16 = false; break;
    case ultramem::v1::DTYPE_BF16: out->out_bf16 = true; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("out_dtype ", static_cast<int>(request.out_dtype()),
                                                     " is not DTYPE_F32 or DTYPE_BF16"));
  }

  out->layer = layer;
  out->block_index = block_index;
  out->num_tokens = static_cast<int>(T);
  out->num_selections = static_cast<int>(S);
  out->cores = static_cast<int>(h);
  out->offsets.resize(T + 1);
  if (request.token_offsets().empty()) {
    if (S % T != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token_offsets is empty but num_selections ", S, " is not a multiple of num_tokens ", T));
    }
    out->uniform = true;
    for (uint64_t t = 0; t <= T; ++t) out->offsets[t] = static_cast<int32_t>(t * (S / T));
  } else {
    if (request.token_offsets().size() != (T + 1) * 4) {
      return SizeError("token_offsets", request.token_offsets().size(), T + 1, "num_tokens + 1", 4);
    }
    std::memcpy(out->offsets.data(), request.token_offsets().data(), (T + 1) * 4);
    if (out->offsets[0] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_offsets[0] is ", out->offsets[0], "; it must be 0"));
    }
    for (uint64_t t = 0; t < T; ++t) {
      if (out->offsets[t + 1] < out->offsets[t]) {
        return absl::InvalidArgumentError(absl::StrCat("token_offsets decreases at token ", t, ": ",
                                                       out->offsets[t], " then ", out->offsets[t + 1]));
      }
    }
    if (static_cast<uint64_t>(out->offsets[T]) != S) {
      return absl::InvalidArgumentError(absl::StrCat("token_offsets[", T, "] is ", out->offsets[T],
                                                     "; it must equal num_selections ", S));
    }
    out->uniform = false;
  }

  out->rows.resize(S);
  if (row_bytes == 8) {
    std::memcpy(out->rows.data(), request.rows().data(), S * 8);
  } else {
    for (uint64_t s = 0; s < S; ++s) {
      int32_t v;
      std::memcpy(&v, request.rows().data() + s * 4, 4);
      out->rows[s] = v;
    }
  }
  out->groups.resize(S);
  std::memcpy(out->groups.data(), request.groups().data(), S * 4);
  out->weights.resize(S * h);
  std::memcpy(out->weights.data(), request.weights().data(), S * h * 4);

  for (uint64_t s = 0; s < S; ++s) {
    const int64_t row = out->rows[s];
    if (row < block.row_begin || row >= block.row_end) {
      return absl::OutOfRangeError(absl::StrCat(
          "selection ", s, " (token ", TokenOf(*out, static_cast<int>(s)), "): row ", row,
          " is outside this shard's rows [", block.row_begin, ", ", block.row_end, ") of memory layer ",
          layer));
    }
    const int32_t group = out->groups[s];
    if (group < 0 || group >= shard.expand) {
      return absl::InvalidArgumentError(absl::StrCat(
          "selection ", s, " (token ", TokenOf(*out, static_cast<int>(s)), "): group ", group,
          " is outside [0, E = ", shard.expand, ")"));
    }
    for (uint64_t c = 0; c < h; ++c) {
      const float w = out->weights[s * h + c];
      if (!std::isfinite(w)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "selection ", s, " (token ", TokenOf(*out, static_cast<int>(s)), "): weight of core ", c,
            " is ", std::isnan(w) ? "NaN" : (w > 0 ? "+inf" : "-inf"), "; weights must be finite"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ultramem::memory
