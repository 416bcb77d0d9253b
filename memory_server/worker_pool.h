// A fixed set of threads running queued tasks: where lookups that must read RocksDB go, so that
// gRPC's callback threads never block on disk.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ultramem::memory {

class WorkerPool {
 public:
  explicit WorkerPool(int num_threads);
  // Runs every task already queued, then joins the threads.
  ~WorkerPool();
  void Submit(std::function<void()> task);

 private:
  void Loop();
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ultramem::memory
