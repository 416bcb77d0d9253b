// Every bad input to Lookup gets its code and a message that says what was wrong.
#include "memory_server/request_decoder.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "memory_server/tests/test_util.h"

namespace ultramem::memory {
namespace {

using ultramem::v1::LookupRequest;

StoreManifest Shard() {
  StoreManifest m;
  m.model_id = "m";
  m.version = "v1";
  m.num_rows = 1024;
  m.expand = 4;
  m.value_dim = 64;
  m.cores = 2;
  m.num_memory_layers = 3;
  m.rows_per_key = 4;
  m.blocks = {BlockSpec{0, 100, 900, 16, 48, 0}, BlockSpec{1, 100, 900, 16, 48, 0}};
  return m;
}

LookupRequest Valid() {
  std::mt19937_64 rng(3);
  testing::Selections sel = testing::RandomSelections(rng, 1, 2, 4, 100, 900, 4, 2);
  return testing::MakeRequest(sel, 2);
}

void ExpectError(const LookupRequest& request, absl::StatusCode code, const std::string& words) {
  DecodedLookup decoded;
  LookupLimits limits;
  limits.max_batch_tokens = 8;
  limits.max_batch_selections = 64;
  absl::Status status = DecodeLookupRequest(request, Shard(), limits, &decoded);
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(status.message().find(words), absl::string_view::npos)
      << "message '" << status.message() << "' lacks '" << words << "'";
}

void SetRow(LookupRequest* r, int s, int64_t row) {
  std::string rows = r->rows();
  std::memcpy(rows.data() + 8 * s, &row, 8);
  r->set_rows(rows);
}

TEST(RequestDecoderTest, AcceptsValidRequestsInBothLayouts) {
  DecodedLookup decoded;
  LookupRequest r = Valid();
  ASSERT_TRUE(DecodeLookupRequest(r, Shard(), {}, &decoded).ok());
  EXPECT_EQ(decoded.block_index, 1);
  EXPECT_EQ(decoded.num_selections, 8);
  EXPECT_TRUE(decoded.uniform);
  std::mt19937_64 rng(3);
  testing::Selections sel = testing::RandomSelections(rng, 0, 2, 4, 100, 900, 4, 2);
  sel.offsets = {0, 1, 8};
  ASSERT_TRUE(DecodeLookupRequest(testing::MakeRequest(sel, 2, false, true), Shard(), {}, &decoded).ok());
  EXPECT_FALSE(decoded.uniform);
  EXPECT_EQ(decoded.rows, sel.rows);
}

TEST(RequestDecoderTest, RowOutsideTheShardIsOutOfRange) {
  LookupRequest r = Valid();
  SetRow(&r, 5, 900);
  ExpectError(r, absl::StatusCode::kOutOfRange,
              "selection 5 (token 1): row 900 is outside this shard's rows [100, 900) of memory layer 1");
  SetRow(&r, 5, -3);
  ExpectError(r, absl::StatusCode::kOutOfRange, "row -3 is outside");
}

TEST(RequestDecoderTest, GroupOutsideExpandIsInvalid) {
  LookupRequest r = Valid();
  std::string groups = r.groups();
  const int32_t bad = 4;
  std::memcpy(groups.data() + 4 * 2, &bad, 4);
  r.set_groups(groups);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "selection 2 (token 0): group 4 is outside [0, E = 4)");
}

TEST(RequestDecoderTest, NonFiniteWeightIsInvalid) {
  for (float w : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    LookupRequest r = Valid();
    std::string weights = r.weights();
    std::memcpy(weights.data() + 4 * 3, &w, 4);  // selection 1, core 1
    r.set_weights(weights);
    ExpectError(r, absl::StatusCode::kInvalidArgument, "selection 1 (token 0): weight of core 1 is");
  }
}

TEST(RequestDecoderTest, InconsistentSizesAreInvalid) {
  LookupRequest r = Valid();
  r.set_rows(r.rows().substr(0, 60));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "rows has 60 bytes; want num_selections = 8 × 8 = 64");
  r = Valid();
  r.set_groups(r.groups() + "x");
  ExpectError(r, absl::StatusCode::kInvalidArgument, "groups has 33 bytes");
  r = Valid();
  r.set_weights(r.weights().substr(0, 32));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "weights has 32 bytes; want num_selections × h = 16");
  r = Valid();
  r.set_num_selections(7);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "rows has 64 bytes; want num_selections = 7");
  r = Valid();
  r.set_num_tokens(3);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "not a multiple of num_tokens 3");
  r = Valid();
  r.set_token_offsets(std::string(8, '\0'));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "token_offsets has 8 bytes; want num_tokens + 1 = 3");
  r = Valid();
  const int32_t offsets[3] = {0, 6, 5};
  r.set_token_offsets(std::string(reinterpret_cast<const char*>(offsets), 12));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "token_offsets decreases at token 1");
  r = Valid();
  const int32_t short_offsets[3] = {0, 2, 7};
  r.set_token_offsets(std::string(reinterpret_cast<const char*>(short_offsets), 12));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "token_offsets[2] is 7; it must equal num_selections 8");
  r = Valid();
  r.set_num_tokens(0);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "num_tokens is 0");
  r = Valid();
  r.set_num_cores(3);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "num_cores is 3; the model has h = 2");
  r = Valid();
  r.set_row_type(ultramem::v1::INDEX_TYPE_UNSPECIFIED);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "row_type 0 is not");
  r = Valid();
  r.set_out_dtype(static_cast<ultramem::v1::DType>(7));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "out_dtype 7 is not");
}

TEST(RequestDecoderTest, UnknownLayerIsInvalid) {
  LookupRequest r = Valid();
  r.set_layer(5);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "unknown memory layer 5: the model has 3");
  r.set_layer(2);
  ExpectError(r, absl::StatusCode::kInvalidArgument,
              "memory layer 2 is not held by this shard (it holds layers 0, 1)");
}

TEST(RequestDecoderTest, BatchOverTheLimitIsResourceExhausted) {
  std::mt19937_64 rng(1);
  testing::Selections many_tokens = testing::RandomSelections(rng, 0, 9, 1, 100, 900, 4, 2);
  ExpectError(testing::MakeRequest(many_tokens, 2), absl::StatusCode::kResourceExhausted,
              "num_tokens 9 exceeds this server's limit of 8 tokens per request");
  testing::Selections many_rows = testing::RandomSelections(rng, 0, 2, 40, 100, 900, 4, 2);
  ExpectError(testing::MakeRequest(many_rows, 2), absl::StatusCode::kResourceExhausted,
              "num_selections 80 exceeds this server's limit of 64");
}

}  // namespace
}  // namespace ultramem::memory
