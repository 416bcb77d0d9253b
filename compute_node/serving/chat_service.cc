// Implementation of compute_node/serving/chat_service.h.
//
// A Chat stream is a ServerWriteReactor fed by the scheduler thread: each token becomes a chunk in
// the reactor's queue, written one at a time (gRPC allows one write in flight). The reactor
// calls Finish only after the scheduler's on_finish, so the scheduler's callbacks never outlive it.
#include "compute_node/serving/chat_service.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "compute_node/serving/chat_template.h"
#include "compute_node/serving/text_stream.h"

namespace ultramem {
namespace {

using Clock = std::chrono::steady_clock;

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

const char* ReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "error";
}

class ChatReactor : public grpc::ServerWriteReactor<v1::ChatChunk> {
 public:
  ChatReactor(const ByteTokenizer* tokenizer, Scheduler* scheduler, ServingMetrics* metrics,
              std::vector<std::string> stops, int prompt_tokens)
      : tokenizer_(tokenizer), scheduler_(scheduler), metrics_(metrics), text_(std::move(stops)),
        prompt_tokens_(prompt_tokens), arrival_(Clock::now()) {}

  void Begin(GenerationRequest req) {
    req.on_token = [this](int32_t token) { return OnToken(token); };
    req.on_finish = [this](FinishReason reason, const absl::Status& status) { OnFinish(reason, status); };
    metrics_->RequestStarted(prompt_tokens_);
    // Held across Submit: the scheduler may call back at once, and must find id_ set.
    std::unique_lock<std::mutex> lock(mu_);
    absl::StatusOr<uint64_t> id = scheduler_->Submit(std::move(req));
    if (!id.ok()) {
      lock.unlock();
      metrics_->RequestError(id.status().code());
      Finish(ToGrpc(id.status()));
      return;
    }
    id_ = *id;
    submitted_ = true;
    if (cancel_seen_) scheduler_->Cancel(id_);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_seen_ = true;
    if (submitted_) scheduler_->Cancel(id_);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      broken_ = true;
      queue_.clear();
    } else {
      queue_.pop_front();
    }
    Pump(lock);
  }

  void OnDone() override { delete this; }

 private:
  // Scheduler thread.
  bool OnToken(int32_t token) {
    const auto now = Clock::now();
    if (completion_tokens_ == 0) {
      first_token_ = now;
      metrics_->FirstToken(std::chrono::duration<double>(now - arrival_).count());
    } else {
      metrics_->NextToken(std::chrono::duration<double>(now - last_token_).count());
    }
    last_token_ = now;
    completion_tokens_++;
    bool stopped = false;
    v1::ChatChunk chunk;
    chunk.set_text(text_.Push(tokenizer_->DecodeOne(token), &stopped));
    chunk.add_token_ids(token);
    std::unique_lock<std::mutex> lock(mu_);
    queue_.push_back(std::move(chunk));
    Pump(lock);
    return !stopped;
  }

  void OnFinish(FinishReason reason, const absl::Status& status) {
    const double total = std::chrono::duration<double>(Clock::now() - arrival_).count();
    metrics_->RequestFinished(ReasonName(reason), total);
    if (!status.ok() && reason != FinishReason::kCancelled) metrics_->RequestError(status.code());
    std::unique_lock<std::mutex> lock(mu_);
    if (reason == FinishReason::kStop || reason == FinishReason::kLength) {
      v1::ChatChunk last;
      last.set_text(text_.Flush());
      last.set_finish_reason(reason == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH);
      v1::Usage* usage = last.mutable_usage();
      usage->set_prompt_tokens(prompt_tokens_);
      usage->set_completion_tokens(completion_tokens_);
      usage->set_time_to_first_token_seconds(
          completion_tokens_ > 0 ? std::chrono::duration<double>(first_token_ - arrival_).count() : total);
      usage->set_total_seconds(total);
      queue_.push_back(std::move(last));
      final_status_ = grpc::Status::OK;
    } else if (reason == FinishReason::kCancelled) {
      final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      if (!status.ok() && status.code() != absl::StatusCode::kCancelled) final_status_ = ToGrpc(status);
      queue_.clear();
    } else {
      final_status_ = ToGrpc(status);
    }
    finishing_ = true;
    Pump(lock);
  }

  // Starts the next write or the Finish. Unlocks `lock` before calling into gRPC: after Finish,
  // OnDone may delete this reactor on another thread, so nothing here touches `this` afterwards.
  void Pump(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finished_) return;
    if (!queue_.empty() && !broken_) {
      writing_ = true;
      v1::ChatChunk* chunk = &queue_.front();  // deque: stays put while others are appended
      lock.unlock();
      StartWrite(chunk);
      return;
    }
    if (finishing_) {
      finished_ = true;
      const grpc::Status st = broken_ && final_status_.ok()
                                  ? grpc::Status(grpc::StatusCode::CANCELLED, "client went away")
                                  : final_status_;
      lock.unlock();
      Finish(st);
    }
  }

  const ByteTokenizer* tokenizer_;
  Scheduler* scheduler_;
  ServingMetrics* metrics_;
  TextStream text_;  // scheduler thread only
  const int prompt_tokens_;
  const Clock::time_point arrival_;
  Clock::time_point first_token_, last_token_;
  int completion_tokens_ = 0;

  std::mutex mu_;
  std::deque<v1::ChatChunk> queue_;  // front is being written when writing_
  bool writing_ = false, broken_ = false, finishing_ = false, finished_ = false;
  bool submitted_ = false, cancel_seen_ = false;
  uint64_t id_ = 0;
  grpc::Status final_status_;
};

class ErrorReactor : public grpc::ServerWriteReactor<v1::ChatChunk> {
 public:
  explicit ErrorReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

ChatServiceImpl::ChatServiceImpl(const ModelRuntime* runtime, Scheduler* scheduler,
                                 ServingMetrics* metrics, ChatServiceOptions options)
    : runtime_(runtime), scheduler_(scheduler), metrics_(metrics), options_(std::move(options)) {}

absl::StatusOr<GenerationRequest> ChatServiceImpl::Prepare(const v1::ChatRequest& request) const {
  if (!request.model().empty() && request.model() != options_.model_name) {
    return absl::NotFoundError(absl::StrCat("unknown model '", request.model(), "': this node serves '",
                                            options_.model_name, "' (see ListModels)"));
  }
  if (request.messages().empty()) {
    return absl::InvalidArgumentError("messages is empty: send at least one user message");
  }
  std::vector<ChatTurn> turns;
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::ChatMessage& m = request.messages(i);
    ChatTurn t;
    switch (m.role()) {
      case v1::ROLE_SYSTEM: t.role = ChatRole::kSystem; break;
      case v1::ROLE_USER: t.role = ChatRole::kUser; break;
      case v1::ROLE_ASSISTANT: t.role = ChatRole::kAssistant; break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "messages[", i, "] has role ", static_cast<int>(m.role()),
            ": use ROLE_SYSTEM (1), ROLE_USER (2) or ROLE_ASSISTANT (3)"));
    }
    t.content = m.content();
    turns.push_back(std::move(t));
  }
  if (request.messages(request.messages_size() - 1).content().empty()) {
    return absl::InvalidArgumentError("the last message is empty: nothing to answer");
  }
  const v1::SamplingParams& sp = request.sampling();
  GenerationRequest req;
  req.sampling.temperature = sp.temperature();
  req.sampling.top_p = sp.top_p() == 0.0f ? 1.0f : sp.top_p();
  req.sampling.top_k = sp.top_k();
  req.sampling.seed = sp.has_seed() ? sp.seed() : 0;
  absl::Status valid = req.sampling.Validate();
  if (!valid.ok()) return valid;
  if (sp.max_tokens() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 0, got ", sp.max_tokens()));
  }
  req.max_tokens = sp.max_tokens() == 0 ? options_.default_max_tokens : sp.max_tokens();
  auto prompt = ApplyChatTemplate(runtime_->tokenizer, turns);
  if (!prompt.ok()) return prompt.status();
  req.prompt = std::move(*prompt);
  const int64_t context = runtime_->engine->config().max_position_embeddings;
  if (static_cast<int64_t>(req.prompt.size()) >= context) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt is ", req.prompt.size(),
                                                   " tokens; the model's context is ", context,
                                                   " tokens: shorten the conversation"));
  }
  if (auto eos = runtime_->tokenizer.eos()) req.stop_tokens.push_back(*eos);
  if (auto end = runtime_->tokenizer.Special("<|end|>")) req.stop_tokens.push_back(*end);
  return req;
}

grpc::ServerWriteReactor<v1::ChatChunk>* ChatServiceImpl::Chat(grpc::CallbackServerContext* context,
                                                               const v1::ChatRequest* request) {
  absl::StatusOr<GenerationRequest> req = Prepare(*request);
  if (!req.ok()) {
    metrics_->RequestError(req.status().code());
    return new ErrorReactor(ToGrpc(req.status()));
  }
  std::vector<std::string> stops(request->sampling().stop().begin(), request->sampling().stop().end());
  auto* reactor = new ChatReactor(&runtime_->tokenizer, scheduler_, metrics_, std::move(stops),
                                  static_cast<int>(req->prompt.size()));
  reactor->Begin(std::move(*req));
  return reactor;
}

grpc::ServerUnaryReactor* ChatServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                      const v1::ListModelsRequest*,
                                                      v1::ListModelsResponse* response) {
  const ModelConfig& cfg = runtime_->engine->config();
  v1::ModelInfo* m = response->add_models();
  m->set_name(options_.model_name);
  m->set_context_length(cfg.max_position_embeddings);
  m->set_vocab_size(cfg.vocab_size);
  m->set_dense_parameters(runtime_->weights->DenseBytesPerToken() / 4);
  if (cfg.memory) m->set_memory_values(cfg.memory->NumRows() * cfg.memory->value_dim * cfg.NumMemoryLayers());
  m->set_distributed(runtime_->remote != nullptr);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ChatServiceImpl::Load(grpc::CallbackServerContext* context,
                                                const v1::LoadRequest*, v1::LoadResponse* response) {
  const SchedulerStats s = scheduler_->Stats();
  response->set_running(s.running);
  response->set_waiting(s.waiting);
  response->set_max_running(options_.max_running);
  response->set_max_waiting(options_.max_waiting);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace ultramem
