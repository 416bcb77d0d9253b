// Runs the libFuzzer entry point of fuzz/lookup_decoder_fuzz.cc over random bytes and over
// mutations of valid requests, so that every build (gcc included) exercises it without libFuzzer.
#include <cstdint>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "ultramem/v1/memory.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

void Feed(const std::string& bytes) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

TEST(LookupDecoderFuzzReplay, RandomBytes) {
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 20000; ++i) {
    std::string bytes(rng() % 200, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    Feed(bytes);
  }
}

TEST(LookupDecoderFuzzReplay, MutatedValidRequests) {
  std::mt19937_64 rng(99);
  for (int i = 0; i < 5000; ++i) {
    ultramem::v1::LookupRequest r;
    const int tokens = 1 + static_cast<int>(rng() % 3), per = static_cast<int>(rng() % 5);
    r.set_layer(rng() % 2 ? 0 : 2);
    r.set_num_tokens(tokens);
    r.set_num_selections(tokens * per);
    r.set_row_type(ultramem::v1::INDEX_TYPE_INT64);
    r.set_num_cores(2);
    std::string rows, groups, weights;
    for (int s = 0; s < tokens * per; ++s) {
      int64_t row = 8 + static_cast<int64_t>(rng() % 32);
      int32_t group = static_cast<int32_t>(rng() % 4);
      float w[2] = {1.0f, -0.5f};
      rows.append(reinterpret_cast<const char*>(&row), 8);
      groups.append(reinterpret_cast<const char*>(&group), 4);
      weights.append(reinterpret_cast<const char*>(w), 8);
    }
    r.set_rows(rows);
    r.set_groups(groups);
    r.set_weights(weights);
    std::string bytes(1, '\0');  // first byte even: parse the rest as a LookupRequest
    bytes += r.SerializeAsString();
    Feed(bytes);  // valid
    for (int m = 0; m < 4; ++m) {
      std::string mutated = bytes;
      if (mutated.size() > 1) mutated[1 + rng() % (mutated.size() - 1)] ^= static_cast<char>(1 + rng() % 255);
      Feed(mutated);
      Feed(mutated.substr(0, rng() % (mutated.size() + 1)));
    }
  }
}

}  // namespace
