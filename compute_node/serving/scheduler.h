// Continuous batching: requests join and leave the running batch between engine steps, prompts
// are prefilled in chunks next to the running decodes, the waiting queue is bounded, and a
// cancelled request frees its slot before the next step.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "compute_node/engine.h"
#include "compute_node/sampler.h"

namespace ultramem {

enum class FinishReason { kStop, kLength, kCancelled, kError };

struct SchedulerOptions {
  int max_running = 32;               // sequences decoded together
  int max_waiting = 256;              // queued requests beyond that: RESOURCE_EXHAUSTED
  int max_prefill_tokens = 256;       // prompt tokens prefilled per step (long prompts in chunks)
};

// Called on the scheduler thread; must not block. Return false to stop the generation (the
// request then finishes with kStop: a stop string was seen).
using TokenCallback = std::function<bool(int32_t token)>;
// Called exactly once, on the scheduler thread (or in Submit's caller for a refusal it returns).
using FinishCallback = std::function<void(FinishReason reason, const absl::Status& status)>;

struct GenerationRequest {
  std::vector<int32_t> prompt;       // non-empty, fits the context with room for one token
  SamplingParams sampling;
  int max_tokens = 256;              // >= 1
  std::vector<int32_t> stop_tokens;  // end the generation (not emitted), e.g. <|eos|>
  TokenCallback on_token;
  FinishCallback on_finish;
};

struct SchedulerStats {
  int running = 0;
  int waiting = 0;
  int64_t kv_cache_bytes = 0;
};

// Observers for metrics; all optional, all called on the scheduler thread.
struct SchedulerHooks {
  std::function<void(const SchedulerStats&)> on_step;
};

class Scheduler {
 public:
  Scheduler(Engine* engine, const SchedulerOptions& options, SchedulerHooks hooks = {});
  ~Scheduler();  // Shutdown()

  // Queues a request; returns its id. RESOURCE_EXHAUSTED when the waiting queue is full,
  // UNAVAILABLE after Shutdown. On error the callbacks are not called.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request);
  // Finishes the request with kCancelled and frees its slot before the next step. No effect on a
  // finished or unknown id. Thread safe.
  void Cancel(uint64_t id);
  // Stops accepting, cancels everything queued or running, joins the thread.
  void Shutdown();

  SchedulerStats Stats() const;

 private:
  struct Active;
  void Loop();
  void Step(std::vector<std::unique_ptr<Active>>& running);

  Engine* engine_;
  SchedulerOptions options_;
  SchedulerHooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Active>> waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> cancelled_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  SchedulerStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace ultramem
