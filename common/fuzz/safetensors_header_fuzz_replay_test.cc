// Drives the libFuzzer entry point (safetensors_header_fuzz.cc) from gtest so that every build,
// gcc included, runs it: over the seed corpus in fuzz/corpus/ plus built-in seeds, then over a few
// thousand seeded random mutations of them (deterministic: same inputs on every run).
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::string Image(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\x3f');
}

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds = {
      "",
      std::string(8, '\0'),
      Image("{}", 0),
      Image(R"({"__metadata__":{"format":"pt"}})", 0),
      Image(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 16),
      Image(R"({"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
            R"("b":{"dtype":"F16","shape":[1,1],"data_offsets":[6,8]},)"
            R"("c":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
            R"("d":{"dtype":"I32","shape":[0],"data_offsets":[16,16]}})", 16),
      Image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 8),
      Image(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]}})", 4),
  };
  const char* dir = ULTRAMEM_FUZZ_CORPUS_DIR;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    seeds.push_back(ss.str());
  }
  return seeds;
}

void RunInput(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

TEST(SafetensorsHeaderFuzzReplay, Seeds) {
  const std::vector<std::string> seeds = Seeds();
  EXPECT_GE(seeds.size(), 8u);
  for (const std::string& s : seeds) RunInput(s);
}

// libFuzzer-style mutations: bit flips, interesting bytes and tokens, inserts, erases, splices and
// header-length rewrites, 1-4 per input.
TEST(SafetensorsHeaderFuzzReplay, SeededMutations) {
  const std::vector<std::string> seeds = Seeds();
  const std::vector<std::string> tokens = {"{", "}", "[", "]", ",", ":", "\"", "-1", "0",
                                           "1e400", "18446744073709551616", "\"F32\"", "\"I64\"",
                                           "\"dtype\"", "\"shape\"", "\"data_offsets\"", "null",
                                           "\"__metadata__\"", "\\u0000", "\xff", "[[[[[[[["};
  std::mt19937_64 rng(20240611);
  constexpr int kIterations = 5000;
  for (int it = 0; it < kIterations; ++it) {
    std::string s = seeds[rng() % seeds.size()];
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 7) {
        case 0:
          if (!s.empty()) s[pos % s.size()] ^= static_cast<char>(1u << (rng() % 8));
          break;
        case 1:
          if (!s.empty()) s[pos % s.size()] = static_cast<char>(rng());
          break;
        case 2:
          s.insert(pos, tokens[rng() % tokens.size()]);
          break;
        case 3:
          if (!s.empty()) s.erase(pos % s.size(), 1 + rng() % 8);
          break;
        case 4: {  // splice in part of another seed
          const std::string& other = seeds[rng() % seeds.size()];
          if (!other.empty()) {
            const size_t from = rng() % other.size();
            s.insert(pos, other.substr(from, 1 + rng() % 32));
          }
          break;
        }
        case 5:  // keep the header length consistent with a mutated header
          if (s.size() >= 8) {
            uint64_t n = s.size() - 8 - (rng() % 4 == 0 ? rng() % (s.size() - 7) : 0);
            std::memcpy(s.data(), &n, 8);
          }
          break;
        case 6:
          if (!s.empty()) s.resize(rng() % s.size());
          break;
      }
    }
    RunInput(s);
  }
}

}  // namespace
