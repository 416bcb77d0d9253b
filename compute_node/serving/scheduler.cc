// Implementation of compute_node/serving/scheduler.h.
#include "compute_node/serving/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace ultramem {

struct Scheduler::Active {
  uint64_t id = 0;
  GenerationRequest req;
  std::unique_ptr<Sequence> seq;
  std::unique_ptr<Sampler> sampler;
  size_t prefilled = 0;   // prompt tokens already in the KV cache
  int generated = 0;
  int32_t last = -1;      // the token to feed at the next decode step
  bool finished = false;

  void Finish(FinishReason reason, const absl::Status& status) {
    if (finished) return;
    finished = true;
    req.on_finish(reason, status);
  }
};

Scheduler::Scheduler(Engine* engine, const SchedulerOptions& options, SchedulerHooks hooks)
    : engine_(engine), options_(options), hooks_(std::move(hooks)) {
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Shutdown(); }

absl::StatusOr<uint64_t> Scheduler::Submit(GenerationRequest request) {
  const int64_t context = engine_->config().max_position_embeddings;
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (static_cast<int64_t>(request.prompt.size()) >= context) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", request.prompt.size(),
                                                   " tokens; the model's context is ", context,
                                                   " tokens: shorten the conversation"));
  }
  if (request.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be >= 1");
  auto a = std::make_unique<Active>();
  a->sampler = std::make_unique<Sampler>(request.sampling);
  a->req = std::move(request);
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return absl::UnavailableError("the compute node is shutting down");
  if (static_cast<int>(waiting_.size()) >= options_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the queue is full (", options_.max_waiting, " requests waiting): retry later"));
  }
  a->id = next_id_++;
  const uint64_t id = a->id;
  waiting_.push_back(std::move(a));
  stats_.waiting = static_cast<int>(waiting_.size());
  cv_.notify_one();
  return id;
}

void Scheduler::Cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.push_back(id);
  cv_.notify_one();
}

void Scheduler::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Scheduler::Loop() {
  std::vector<std::unique_ptr<Active>> running;
  for (;;) {
    std::vector<std::unique_ptr<Active>> to_cancel;
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || !running.empty() || !cancelled_.empty(); });
      stopping = stop_;
      // Cancellations first, so their slots are free for this step's admissions.
      for (uint64_t id : cancelled_) {
        auto in_running = std::find_if(running.begin(), running.end(), [&](auto& a) { return a->id == id; });
        if (in_running != running.end()) {
          to_cancel.push_back(std::move(*in_running));
          running.erase(in_running);
          continue;
        }
        auto in_waiting = std::find_if(waiting_.begin(), waiting_.end(), [&](auto& a) { return a->id == id; });
        if (in_waiting != waiting_.end()) {
          to_cancel.push_back(std::move(*in_waiting));
          waiting_.erase(in_waiting);
        }
      }
      cancelled_.clear();
      if (stopping) {
        for (auto& a : running) to_cancel.push_back(std::move(a));
        running.clear();
        for (auto& a : waiting_) to_cancel.push_back(std::move(a));
        waiting_.clear();
      }
      while (static_cast<int>(running.size()) < options_.max_running && !waiting_.empty()) {
        running.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
        running.back()->seq = engine_->NewSequence();
      }
      stats_.running = static_cast<int>(running.size());
      stats_.waiting = static_cast<int>(waiting_.size());
    }
    for (auto& a : to_cancel) {
      a->Finish(FinishReason::kCancelled, stopping ? absl::UnavailableError("the compute node is shutting down")
                                                   : absl::CancelledError("cancelled by the client"));
    }
    if (stopping) {
      std::lock_guard<std::mutex> lock(mu_);
      stats_ = {};
      return;
    }
    if (!running.empty()) Step(running);
    int64_t kv = 0;
    for (auto& a : running) kv += a->seq->CacheBytes();
    SchedulerStats snapshot;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.running = static_cast<int>(running.size());
      stats_.waiting = static_cast<int>(waiting_.size());
      stats_.kv_cache_bytes = kv;
      snapshot = stats_;
    }
    if (hooks_.on_step) hooks_.on_step(snapshot);
  }
}

void Scheduler::Step(std::vector<std::unique_ptr<Active>>& running) {
  // One engine call: every decoding sequence's last token, plus prompt chunks within the budget.
  std::vector<SequenceInput> batch;
  std::vector<Active*> owners;
  int prefill_budget = options_.max_prefill_tokens;
  for (auto& a : running) {
    if (a->prefilled < a->req.prompt.size()) {
      if (prefill_budget <= 0) continue;
      const size_t n = std::min<size_t>(prefill_budget, a->req.prompt.size() - a->prefilled);
      prefill_budget -= static_cast<int>(n);
      batch.push_back({a->seq.get(), absl::MakeConstSpan(a->req.prompt.data() + a->prefilled, n), false});
    } else {
      batch.push_back({a->seq.get(), absl::MakeConstSpan(&a->last, 1), false});
    }
    owners.push_back(a.get());
  }
  if (batch.empty()) return;
  ForwardOutput out;
  absl::Status status = engine_->Forward(absl::MakeConstSpan(batch), {}, &out);
  if (!status.ok()) {
    // The step's requests fail with the engine's status (e.g. UNAVAILABLE naming a memory
    // block); the node keeps serving the others and later requests.
    UM_LOG_WARNING("engine step failed for ", owners.size(), " requests: ", status.ToString());
    for (Active* a : owners) a->Finish(FinishReason::kError, status);
  } else {
    const int64_t context = engine_->config().max_position_embeddings;
    const int V = engine_->config().vocab_size;
    for (size_t i = 0; i < owners.size(); ++i) {
      Active* a = owners[i];
      if (a->prefilled < a->req.prompt.size()) {
        a->prefilled += batch[i].tokens.size();
        if (a->prefilled < a->req.prompt.size()) continue;  // more prompt chunks to go
      }
      const int32_t token = a->sampler->Sample(absl::MakeConstSpan(out.logits.data() + i * V, V));
      a->generated++;
      if (std::find(a->req.stop_tokens.begin(), a->req.stop_tokens.end(), token) != a->req.stop_tokens.end()) {
        a->Finish(FinishReason::kStop, absl::OkStatus());
        continue;
      }
      if (!a->req.on_token(token)) {
        a->Finish(FinishReason::kStop, absl::OkStatus());
        continue;
      }
      if (a->generated >= a->req.max_tokens || a->seq->length() + 1 >= context) {
        a->Finish(FinishReason::kLength, absl::OkStatus());
        continue;
      }
      a->last = token;
    }
  }
  running.erase(std::remove_if(running.begin(), running.end(), [](auto& a) { return a->finished; }),
                running.end());
}

}  // namespace ultramem
