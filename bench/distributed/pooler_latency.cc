// ultramem-bench-pooler: the remote pooler's own round trip. Start -> Wait of one lookup at a
// time (decode-shaped: T tokens, H·m selections each, random rows over the whole table) against
// the memory servers of a shard map, next to a plain synchronous Lookup on the first replica of
// the first shard with the same request. The difference is what the client (callback API,
// fan-out to every shard, hedging timer, merge) adds to the network round trip.
//
//   ultramem-bench-pooler --model DIR --shard_map MAP [--tokens 1] [--calls 2000]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/checkpoint.h"
#include "common/flags_util.h"
#include "common/status.h"
#include "common/tool_main.h"
#include "compute_node/remote/remote_pooler.h"
#include "compute_node/remote/shard_map.h"
#include "ultramem/v1/memory.grpc.pb.h"

ABSL_FLAG(std::string, model, "", "model directory (its config)");
ABSL_FLAG(std::string, shard_map, "", "shard map of running memory servers");
ABSL_FLAG(int, tokens, 1, "tokens per lookup");
ABSL_FLAG(int, calls, 2000, "timed lookups (after 200 warm-up)");

namespace ultramem {
namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

absl::Status Run() {
  UM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt,
                      Checkpoint::Open(absl::GetFlag(FLAGS_model), {.check_shuffle_index = false}));
  const ModelConfig& cfg = ckpt->config();
  if (!cfg.memory) return absl::InvalidArgumentError("the model has no memory layers");
  const MemoryConfig& m = *cfg.memory;
  UM_ASSIGN_OR_RETURN(v1::ShardMap map, ReadShardMap(absl::GetFlag(FLAGS_shard_map)));
  UM_ASSIGN_OR_RETURN(std::unique_ptr<RemotePooler> pooler, RemotePooler::Create(cfg, map, {}));

  const int T = absl::GetFlag(FLAGS_tokens), K = m.SelectionsPerToken(), h = m.tucker_cores;
  const int calls = absl::GetFlag(FLAGS_calls), warmup = 200;
  std::mt19937_64 rng(1);
  std::vector<int64_t> rows(static_cast<size_t>(T) * K);
  std::vector<int32_t> groups(rows.size());
  std::vector<float> scores(rows.size() * h);
  std::vector<float> out(static_cast<size_t>(T) * m.value_expand * m.value_dim);
  auto draw = [&] {
    for (size_t i = 0; i < rows.size(); ++i) {
      rows[i] = static_cast<int64_t>(rng() % m.NumRows());
      groups[i] = static_cast<int32_t>(rng() % m.value_expand);
    }
    for (float& s : scores) s = static_cast<float>(rng() % 1000) / 1000.0f;
  };

  std::vector<double> pooler_us;
  for (int i = 0; i < warmup + calls; ++i) {
    draw();
    PoolRequest req{static_cast<int>(i % cfg.NumMemoryLayers()), T, K, rows.data(),
                    groups.data(), scores.data(), out.data()};
    const auto t0 = Clock::now();
    UM_RETURN_IF_ERROR(pooler->Start(req)->Wait());
    if (i >= warmup) pooler_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  const RemotePoolerStats stats = pooler->Stats();

  // The same shape through a plain synchronous stub on one replica (rows of its block only).
  const auto& shard = map.shards(0);
  auto stub = v1::MemoryService::NewStub(
      grpc::CreateChannel(shard.replicas(0), grpc::InsecureChannelCredentials()));
  const int64_t lo = shard.block(0).row_begin();
  const int64_t hi = shard.block(0).row_end() > 0 ? shard.block(0).row_end() : m.NumRows();
  std::vector<double> sync_us;
  for (int i = 0; i < warmup + calls; ++i) {
    draw();
    v1::LookupRequest r;
    r.set_layer(i % cfg.NumMemoryLayers());
    r.set_num_tokens(T);
    r.set_num_selections(T * K);
    r.set_row_type(v1::INDEX_TYPE_INT64);
    r.set_num_cores(h);
    for (int64_t& row : rows) row = lo + row % (hi - lo);
    r.set_rows(std::string(reinterpret_cast<const char*>(rows.data()), rows.size() * 8));
    r.set_groups(std::string(reinterpret_cast<const char*>(groups.data()), groups.size() * 4));
    r.set_weights(std::string(reinterpret_cast<const char*>(scores.data()), scores.size() * 4));
    std::vector<int32_t> offsets(T + 1);
    for (int t = 0; t <= T; ++t) offsets[t] = t * K;
    r.set_token_offsets(std::string(reinterpret_cast<const char*>(offsets.data()), offsets.size() * 4));
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    const auto t0 = Clock::now();
    grpc::Status st = stub->Lookup(&ctx, r, &resp);
    if (!st.ok()) return absl::InternalError("sync Lookup: " + st.error_message());
    if (i >= warmup) sync_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::printf(
      "{\"tokens\": %d, \"shards\": %d, \"pooler_p50_us\": %.1f, \"pooler_p99_us\": %.1f, "
      "\"sync_one_shard_p50_us\": %.1f, \"sync_one_shard_p99_us\": %.1f, \"attempts\": %lld, "
      "\"hedges\": %lld, \"retries\": %lld, \"lookups\": %lld}\n",
      T, map.shards_size(), Percentile(pooler_us, 0.5), Percentile(pooler_us, 0.99),
      Percentile(sync_us, 0.5), Percentile(sync_us, 0.99), static_cast<long long>(stats.attempts),
      static_cast<long long>(stats.hedges), static_cast<long long>(stats.retries),
      static_cast<long long>(stats.lookups));
  return absl::OkStatus();
}

}  // namespace
}  // namespace ultramem

int main(int argc, char** argv) {
  return ultramem::RunTool(argc, argv, "ultramem-bench-pooler", ultramem::Run);
}
