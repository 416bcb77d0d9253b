// GpuRowPool against common/pooling.h's CPU kernel on fresh random requests (seed printed),
// including rows this shard does not hold and a column slice. Skips, saying why, without a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "common/pooling.h"
#include "gtest/gtest.h"
#include "memory_server/cuda/gpu_pool.h"

namespace ultramem {
namespace {

void Check(int T, int K, int E, int Dv, int h, int col_begin, int col_end, int64_t N) {
  std::random_device rd;
  const uint64_t seed = (uint64_t{rd()} << 32) | rd();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const int width = col_end - col_begin;
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> table(static_cast<size_t>(N) * width);
  for (auto& v : table) v = F32ToBf16(dist(rng));
  std::vector<int64_t> slots(T * K);
  std::vector<int32_t> groups(T * K);
  std::vector<float> scores(T * K * h);
  std::uniform_int_distribution<int64_t> slot_dist(-N / 8, N - 1);  // some negatives: not held
  std::uniform_int_distribution<int32_t> group_dist(0, E - 1);
  for (auto& s : slots) s = std::max<int64_t>(-1, slot_dist(rng));
  for (auto& g : groups) g = group_dist(rng);
  for (auto& s : scores) s = dist(rng);
  std::vector<const uint16_t*> ptrs(T * K);
  for (int i = 0; i < T * K; ++i) ptrs[i] = slots[i] < 0 ? nullptr : table.data() + slots[i] * width;
  PoolShape shape{T, K, E, Dv, h, col_begin, col_end};
  std::vector<float> want(static_cast<size_t>(T) * E * width);
  PoolRowsBf16(shape, ptrs.data(), groups.data(), scores.data(), want.data());
  auto pool = GpuRowPool::Create(table.data(), N, width);
  ASSERT_TRUE(pool.ok()) << pool.status();
  std::vector<float> got(want.size(), NAN);
  absl::Status st = (*pool)->Pool(shape, slots.data(), groups.data(), scores.data(), got.data());
  ASSERT_TRUE(st.ok()) << st;
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << i;
    num += (got[i] - want[i]) * double(got[i] - want[i]);
    den += double(want[i]) * want[i];
  }
  EXPECT_LE(std::sqrt(num / den), 1e-6) << "T " << T << " width " << width;
  // A slot past the table is refused.
  slots[0] = N;
  EXPECT_EQ((*pool)->Pool(shape, slots.data(), groups.data(), scores.data(), got.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GpuRowPool, MatchesCpuPooling) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::fprintf(stderr, "*** GPU TEST SKIPPED: no CUDA device (%s) ***\n",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    GTEST_SKIP() << "no CUDA device: GPU tests run on the GPU machine (bench/gpu/run.sh)";
  }
  Check(/*T=*/37, /*K=*/64, /*E=*/4, /*Dv=*/512, /*h=*/2, 0, 512, 20000);    // vector kernel
  Check(5, 15, 9, 48, 3, 0, 48, 1000);                                       // chunk 16
  Check(11, 20, 4, 96, 2, 48, 96, 3000);                                      // a column slice
  Check(9, 7, 1, 30, 3, 0, 30, 500);                                          // scalar kernel
}

}  // namespace
}  // namespace ultramem
