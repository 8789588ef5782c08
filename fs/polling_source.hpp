// SPDX-License-Identifier: MIT
// The polling change source (the watcher): a thread that looks at every
// control block at an adaptive interval: the fastest bound while data flows
// (for bounds.hot after the last change), then doubling while nothing changes
// up to the slowest bound. Without doorbell interrupts this is how we notice
// peers' commits.
//
// The thread's timer slack is 1 us: with the default 50 us, a sleep of 10 us
// lasts 60 to 100 us, which is what bounded commit-to-seen before. Short
// sleeps are plain nanosleeps (a kick does not shorten them; they are short).
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>

#include "change_source.hpp"
#include "options.hpp"

namespace ivshmfs::fs {

class PollingSource final : public ChangeSource {
 public:
  explicit PollingSource(PollBounds bounds);
  ~PollingSource() override;

  void start(ChangeListener listener) override;
  void stop() noexcept override;
  // Looks as soon as possible and polls fast again for a while.
  void kick() noexcept override;
  // Peers poll: nothing to tell them.
  void committed() noexcept override {}
  [[nodiscard]] std::string status() const override;

 private:
  void run(const std::stop_token& stop);

  PollBounds bounds_;
  ChangeListener listener_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  bool kicked_ = false;
  std::atomic<uint64_t> looks_{0};  // .status
  std::jthread thread_;
};

}  // namespace ivshmfs::fs
