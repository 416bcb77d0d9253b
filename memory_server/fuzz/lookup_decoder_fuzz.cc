// libFuzzer target for the Lookup request decoder: any bytes, as a serialized LookupRequest or as
// raw material for a nearly consistent one, must decode to an error or to a request that is safe
// to pool (checked by pooling it over a small table).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/pooling.h"
#include "memory_server/request_decoder.h"
#include "ultramem/v1/memory.pb.h"

namespace {

using ultramem::memory::BlockSpec;
using ultramem::memory::DecodedLookup;
using ultramem::memory::StoreManifest;

const StoreManifest& Shard() {
  static const StoreManifest* shard = [] {
    auto* m = new StoreManifest();
    m->model_id = "fuzz";
    m->version = "v1";
    m->num_rows = 64;
    m->expand = 4;
    m->value_dim = 8;
    m->cores = 2;
    m->num_memory_layers = 3;
    m->rows_per_key = 1;
    m->blocks = {BlockSpec{0, 8, 40, 2, 6, 0}, BlockSpec{2, 8, 40, 2, 6, 0}};
    return m;
  }();
  return *shard;
}

// A request whose sizes mostly agree, built from the input, to reach the per-selection checks.
ultramem::v1::LookupRequest Structured(const uint8_t* data, size_t size) {
  ultramem::v1::LookupRequest r;
  auto byte = [&](size_t i) -> uint8_t { return i < size ? data[i] : 0; };
  r.set_layer(byte(1) % 4);
  const uint32_t tokens = byte(2) % 5;
  const uint32_t per_token = byte(3) % 6;
  const uint32_t selections = tokens * per_token + (byte(4) == 0xff ? 1 : 0);
  r.set_num_tokens(tokens);
  r.set_num_selections(selections);
  r.set_num_cores(byte(5) == 0xfe ? 3 : 2);
  const bool int32_rows = byte(6) & 1;
  r.set_row_type(int32_rows ? ultramem::v1::INDEX_TYPE_INT32 : ultramem::v1::INDEX_TYPE_INT64);
  r.set_out_dtype(static_cast<ultramem::v1::DType>(byte(7) % 4));
  size_t at = 8;
  auto take = [&](size_t n) {
    std::string out(n, '\0');
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(byte(at++));
    return out;
  };
  r.set_rows(take(selections * (int32_rows ? 4 : 8)));
  r.set_groups(take(selections * 4));
  r.set_weights(take(selections * 2 * 4));
  if (byte(6) & 2) r.set_token_offsets(take((tokens + 1) * 4));
  return r;
}

void CheckAndPool(const DecodedLookup& d) {
  const StoreManifest& m = Shard();
  const BlockSpec& b = m.blocks[d.block_index];
  if (d.num_tokens <= 0 || d.offsets.size() != static_cast<size_t>(d.num_tokens) + 1 ||
      d.offsets[0] != 0 || d.offsets[d.num_tokens] != d.num_selections) {
    __builtin_trap();
  }
  static float table[64][8];
  std::vector<const float*> rows;
  for (int s = 0; s < d.num_selections; ++s) {
    if (d.rows[s] < b.row_begin || d.rows[s] >= b.row_end || d.groups[s] < 0 ||
        d.groups[s] >= m.expand) {
      __builtin_trap();
    }
    for (int c = 0; c < m.cores; ++c) {
      if (!std::isfinite(d.weights[s * m.cores + c])) __builtin_trap();
    }
    rows.push_back(&table[d.rows[s]][b.col_begin]);
  }
  std::vector<float> out(static_cast<size_t>(m.expand) * b.width());
  for (int t = 0; t < d.num_tokens; ++t) {
    if (d.offsets[t + 1] < d.offsets[t]) __builtin_trap();
    ultramem::PoolShape shape;
    shape.num_tokens = 1;
    shape.selections = d.offsets[t + 1] - d.offsets[t];
    shape.expand = m.expand;
    shape.value_dim = m.value_dim;
    shape.cores = m.cores;
    shape.col_begin = b.col_begin;
    shape.col_end = b.col_end;
    ultramem::PoolRowsF32(shape, rows.data() + d.offsets[t], d.groups.data() + d.offsets[t],
                          d.weights.data() + static_cast<size_t>(d.offsets[t]) * m.cores, out.data());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ultramem::memory::LookupLimits limits;
  limits.max_batch_tokens = 3;
  limits.max_batch_selections = 16;
  ultramem::v1::LookupRequest request;
  if (size > 0 && (data[0] & 1)) {
    request = Structured(data, size);
  } else if (!request.ParseFromArray(data + (size > 0), static_cast<int>(size - (size > 0)))) {
    return 0;
  }
  DecodedLookup decoded;
  absl::Status status = ultramem::memory::DecodeLookupRequest(request, Shard(), limits, &decoded);
  if (status.ok()) {
    CheckAndPool(decoded);
  } else if (status.message().empty() ||
             (status.code() != absl::StatusCode::kInvalidArgument &&
              status.code() != absl::StatusCode::kOutOfRange &&
              status.code() != absl::StatusCode::kResourceExhausted)) {
    __builtin_trap();
  }
  return 0;
}
