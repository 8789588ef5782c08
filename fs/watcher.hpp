// SPDX-License-Identifier: MIT
// The watcher: a thread that runs a tick (poll every control block) at an
// adaptive interval: the fastest bound while data flows (for bounds.hot after
// the last change), then doubling while nothing changes up to the slowest
// bound. Peers in other systems write behind our back, so without doorbell
// interrupts this is how we notice them.
//
// The thread's timer slack is 1 us: with the default 50 us, a sleep of 10 us
// lasts 60 to 100 us, which is what bounded commit-to-seen before. Short
// sleeps are plain nanosleeps (a kick does not shorten them; they are short).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <stop_token>
#include <thread>

#include "options.hpp"

namespace ivshmfs::fs {

class Watcher {
 public:
  // Returns true when the tick saw a change.
  using Tick = std::function<bool()>;

  Watcher(PollBounds bounds, Tick tick);
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;
  ~Watcher();

  void start();
  void stop() noexcept;
  // Runs a tick as soon as possible (a local write or reset happened).
  void kick() noexcept;

 private:
  void run(const std::stop_token& stop);

  PollBounds bounds_;
  Tick tick_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  bool kicked_ = false;
  std::jthread thread_;
};

}  // namespace ivshmfs::fs
