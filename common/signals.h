// Signal handling for the servers' main(): the signals that stop (or reload) a server are blocked
// in every thread and taken by the main thread with sigwait, so no handler runs at an arbitrary
// point and every thread the server starts inherits the mask.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <initializer_list>

namespace ultramem {

// Blocks `signals` in the calling thread (call before any thread starts) and returns their set.
inline sigset_t BlockSignals(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) sigaddset(&set, s);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Waits for one of the signals of `set` (blocked by BlockSignals) and returns it.
inline int WaitForSignal(const sigset_t& set) {
  int signal = 0;
  while (sigwait(&set, &signal) != 0) {
  }
  return signal;
}

}  // namespace ultramem
