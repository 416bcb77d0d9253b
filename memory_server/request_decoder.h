// Decoding and checking a LookupRequest against the shard it is sent to. Pure: no I/O, no state,
// never reads out of bounds on any request (the libFuzzer target lookup_decoder_fuzzer covers it).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "memory_server/store_format.h"
#include "ultramem/v1/memory.pb.h"

namespace ultramem::memory {

struct LookupLimits {
  // Tokens per request. Larger batches get RESOURCE_EXHAUSTED; bounds the reply size
  // (T × E × width floats) and the time one request holds a server thread.
  uint32_t max_batch_tokens = 1024;
  // Selections per request over all tokens (a decode step sends T × H·m). Bounds request decoding
  // and the cold reads one request can cause.
  uint32_t max_batch_selections = 1u << 18;
};

// A checked request, in native types.
struct DecodedLookup {
  int layer = 0;
  int block_index = 0;  // index into StoreManifest::blocks
  int num_tokens = 0;
  int num_selections = 0;
  int cores = 1;
  bool uniform = true;               // every token owns num_selections / num_tokens selections
  std::vector<int64_t> rows;         // [S], inside the block
  std::vector<int32_t> groups;       // [S], in [0, E)
  std::vector<float> weights;        // [S, h], finite
  std::vector<int32_t> offsets;      // [T + 1], CSR
  bool out_bf16 = false;
};

// Fills `out` from `request` or says what is wrong: RESOURCE_EXHAUSTED for a batch over `limits`;
// OUT_OF_RANGE for a row outside this shard's block of the layer; INVALID_ARGUMENT for everything
// else (an unknown layer or one this shard does not hold, sizes that disagree with the counts, a
// group outside [0, E), a non-finite weight, num_cores other than h, bad token_offsets, an unknown
// row type or dtype). Messages name the field, the selection and token, and the bound violated.
absl::Status DecodeLookupRequest(const ultramem::v1::LookupRequest& request,
                                 const StoreManifest& shard, const LookupLimits& limits,
                                 DecodedLookup* out);

}  // namespace ultramem::memory
