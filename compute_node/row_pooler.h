// Step 10 of a memory layer behind an interface: the weighted, bucketed row pooling
// (MODEL.md §3), asynchronous and batched so that a remote implementation can keep a lookup in
// flight while the engine runs the blocks between input_block and output_block.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"

namespace ultramem {

// One memory layer's lookups for a batch of tokens (all sequences of a decode step, or all tokens
// of a prefill chunk). All pointers are borrowed and must stay valid until Wait() returns.
struct PoolRequest {
  int layer = 0;           // memory layer j
  int num_tokens = 0;      // T
  int selections = 0;      // K = H·m per token
  const int64_t* rows = nullptr;    // [T*K] physical rows in [0, N)
  const int32_t* groups = nullptr;  // [T*K] in [0, E)
  const float* scores = nullptr;    // [T*K*h] raw signed scores, core c at [.. * h + c]
  float* out = nullptr;             // [T, E, Dv] written in full by the time Wait() returns OK
};

// A lookup in flight.
class PendingPool {
 public:
  virtual ~PendingPool() = default;
  // Blocks until the result is in request.out. Called exactly once. Errors are gRPC-style codes:
  // UNAVAILABLE / DEADLINE_EXCEEDED for remote failures, INVALID_ARGUMENT for bad selections.
  virtual absl::Status Wait() = 0;
};

class RowPooler {
 public:
  virtual ~RowPooler() = default;
  // Starts the lookup. Never blocks on the result. Safe to call from several threads at once.
  virtual std::unique_ptr<PendingPool> Start(const PoolRequest& request) = 0;
};

// A PendingPool that is already done (for synchronous implementations).
class ReadyPool : public PendingPool {
 public:
  explicit ReadyPool(absl::Status status) : status_(std::move(status)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

}  // namespace ultramem
