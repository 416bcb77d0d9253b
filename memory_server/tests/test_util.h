// Shared helpers of the memory-server tests: temporary directories, small random checkpoints,
// request building and the direct (reference) computation of step 10 from a checkpoint.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/checkpoint.h"
#include "common/dtype.h"
#include "common/model_config.h"
#include "memory_server/store_format.h"
#include "ultramem/v1/memory.pb.h"

namespace ultramem::memory::testing {

// A directory under $TEST_TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A small valid model: 2 memory layers, N = knum², E = 4, Dv = 64, h = 2.
ModelConfig SmallConfig(int knum = 32, int value_dim = 64);
// Writes a random checkpoint (values uniform in [-1, 1]) to `dir`; gtest-asserts success.
void WriteSmallCheckpoint(const std::string& dir, const ModelConfig& config, DType dtype,
                          uint64_t seed);

// A random selection set for one memory layer: T tokens, K selections each, rows in [row_begin,
// row_end), groups in [0, E), weights normal.
struct Selections {
  int layer = 0;
  int num_tokens = 0;
  std::vector<int64_t> rows;
  std::vector<int32_t> groups;
  std::vector<float> weights;   // [S, h]
  std::vector<int32_t> offsets;  // [T + 1]; uniform when built by RandomSelections
};
Selections RandomSelections(std::mt19937_64& rng, int layer, int num_tokens, int per_token,
                            int64_t row_begin, int64_t row_end, int expand, int cores);
// Draws rows from a Zipf(s) distribution over [row_begin, row_end) (popularity skewed).
Selections ZipfSelections(std::mt19937_64& rng, int layer, int num_tokens, int per_token,
                          int64_t row_begin, int64_t row_end, int expand, int cores, double s);

// The request for `sel`; `uniform` leaves token_offsets empty.
ultramem::v1::LookupRequest MakeRequest(const Selections& sel, int cores, bool uniform = true,
                                        bool int32_rows = false,
                                        ultramem::v1::DType out = ultramem::v1::DTYPE_F32);

// Step 10 computed directly from the checkpoint in double precision: [T, E, col_end - col_begin].
// `round_bf16` rounds stored values to bf16 first (a store that keeps BF16 rows).
std::vector<float> DirectPool(const Checkpoint& checkpoint, const Selections& sel, int col_begin,
                              int col_end, bool round_bf16 = false);

// Decodes LookupResponse.y to float32.
std::vector<float> ResponseValues(const ultramem::v1::LookupResponse& response);

// Largest |a - b|; gtest-fails when the sizes differ.
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);

// grpc.health.v1.Health/Check for service "": "SERVING", "NOT_SERVING", or the error, within 5 s.
std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel);
// The services named by grpc.reflection.v1alpha list_services, within 5 s ("" when it fails).
std::string ReflectionServices(const std::shared_ptr<grpc::Channel>& channel);
// GET /metrics from 127.0.0.1:port ("" on failure).
std::string ScrapeMetrics(int port);

}  // namespace ultramem::memory::testing
