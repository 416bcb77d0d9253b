// The remote RowPooler: step 10 of every memory layer served by memory servers over gRPC
// (ARCHITECTURE.md). One Lookup per shard per memory layer per engine step; row partial sums are
// added, column slices placed side by side. Deadlines, retries on another replica, hedged requests
// when an attempt is slower than a percentile of recent ones, and UNAVAILABLE naming the block
// when no replica answers.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "compute_node/remote/shard_map.h"
#include "compute_node/row_pooler.h"
#include "ultramem/v1/shard_map.pb.h"

namespace prometheus {
class Registry;
}

namespace ultramem {

struct RemotePoolerOptions {
  // How long Create waits for each replica's Info. An unreachable replica is not an error (it is
  // marked down and retried later); a reachable one that serves something else is.
  int info_timeout_ms = 3000;
  // How long a replica that failed is avoided before it is tried again.
  int replica_down_ms = 500;
  // Where per-shard metrics go; may be null.
  prometheus::Registry* registry = nullptr;
  // TLS: when root_certs_pem is set, channels use TLS (and the client certificate when given).
  std::string root_certs_pem, client_cert_pem, client_key_pem;
};

// Totals since start, for benchmarks and tests.
struct RemotePoolerStats {
  int64_t lookups = 0;            // PendingPools completed
  int64_t attempts = 0;           // RPCs sent
  int64_t retries = 0;            // attempts after a failure
  int64_t hedges = 0;             // attempts sent because the first was slow
  int64_t failures = 0;           // shard lookups that failed on every replica
  double lookup_seconds = 0.0;    // Start -> all replies in, summed
  double wait_seconds = 0.0;      // time callers spent blocked in Wait, summed
};

class RemotePooler : public RowPooler {
 public:
  // Resolves the map against `config`, opens a channel per replica and checks every reachable
  // replica's Info: model_id (and store_version when the map sets one), N, E, Dv, h and that it
  // holds its shard's blocks. FAILED_PRECONDITION naming the replica and the mismatch otherwise.
  static absl::StatusOr<std::unique_ptr<RemotePooler>> Create(const ModelConfig& config,
                                                              const v1::ShardMap& map,
                                                              const RemotePoolerOptions& options);
  ~RemotePooler() override;

  std::unique_ptr<PendingPool> Start(const PoolRequest& request) override;

  // Pings every replica that is not live (deadline timeout_ms each) and marks those that answer.
  // The compute node's health loop calls it so that a shard that comes back is noticed even while
  // no lookup is sent to it.
  void Probe(int timeout_ms = 500);
  // True when every block has at least one replica that answered its last call.
  bool AllBlocksLive() const;
  // Names the blocks with no live replica (empty when AllBlocksLive).
  std::string DeadBlocks() const;
  RemotePoolerStats Stats() const;

  class Impl;

 private:
  explicit RemotePooler(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ultramem
