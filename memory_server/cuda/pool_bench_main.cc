// ultramem-gpu-pool-bench: effective bandwidth of the GPU pooling kernel on random rows against
// the device copy bandwidth. Bytes counted: the selected rows read, Y written, selections read.
//
//   ultramem-gpu-pool-bench [--rows 1048576] [--width 512] [--tokens 1,64,256] [--selections 64]
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "memory_server/cuda/gpu_pool.h"

ABSL_FLAG(int64_t, rows, 1 << 20, "rows in the table (N)");
ABSL_FLAG(int, width, 512, "columns per row (Dv)");
ABSL_FLAG(std::string, tokens, "1,64,256,4096", "token counts to time");
ABSL_FLAG(int, selections, 64, "selections per token (H·m)");
ABSL_FLAG(int, expand, 4, "groups (E)");
ABSL_FLAG(int, cores, 2, "Tucker cores (h)");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace ultramem;
  const int64_t N = absl::GetFlag(FLAGS_rows);
  const int W = absl::GetFlag(FLAGS_width), K = absl::GetFlag(FLAGS_selections);
  const int E = absl::GetFlag(FLAGS_expand), h = absl::GetFlag(FLAGS_cores);
  std::mt19937_64 rng(7);
  std::vector<uint16_t> table(static_cast<size_t>(N) * W);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<uint16_t>(0x3c00 + (rng() & 0x3ff));
  auto pool = GpuRowPool::Create(table.data(), N, W);
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n", pool.status().ToString().c_str());
    return 1;
  }
  auto copy = GpuCopyBandwidth(size_t{2} << 30);
  if (!copy.ok()) {
    std::fprintf(stderr, "%s\n", copy.status().ToString().c_str());
    return 1;
  }
  std::printf("copy bandwidth %.0f GB/s (read+write, 2 GiB buffers)\n", *copy / 1e9);
  std::printf("%8s %10s %12s %10s %8s\n", "tokens", "us", "MB moved", "GB/s", "of copy");
  for (auto piece : absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',')) {
    int T = 0;
    if (!absl::SimpleAtoi(piece, &T) || T <= 0) continue;
    std::vector<int64_t> slots(static_cast<size_t>(T) * K);
    std::vector<int32_t> groups(slots.size());
    std::vector<float> scores(slots.size() * h), out(static_cast<size_t>(T) * E * W);
    for (auto& s : slots) s = static_cast<int64_t>(rng() % N);
    for (auto& g : groups) g = static_cast<int32_t>(rng() % E);
    for (auto& s : scores) s = static_cast<float>(rng() % 1000) / 1000.0f - 0.5f;
    PoolShape shape{T, K, E, W, h, 0, W};
    absl::Status st = (*pool)->Pool(shape, slots.data(), groups.data(), scores.data(), out.data());
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
    auto us = (*pool)->TimeLastKernel(T >= 256 ? 50 : 200);
    if (!us.ok()) {
      std::fprintf(stderr, "%s\n", us.status().ToString().c_str());
      return 1;
    }
    const double bytes = double(T) * K * (W * 2.0 + 8 + 4 + 4.0 * h) + double(T) * E * W * 4.0;
    const double bw = bytes / (*us * 1e-6);
    std::printf("%8d %10.2f %12.2f %10.0f %7.0f%%\n", T, *us, bytes / 1e6, bw / 1e9, 100.0 * bw / *copy);
  }
  return 0;
}
