// SPDX-License-Identifier: MIT
// The futex change source, for a host file (or a split region's pieces):
// peers on this host map the same pages, so their commits wake us through a
// process-shared futex (ivshmfs/wake.hpp, docs/layout.md "Wake-ups on one
// host") in microseconds instead of at the next poll.
//  - waiting: the partition ids our readers wait for are announced in our
//    own control block (waiting_for), as with doorbells; the thread loads
//    the futex words (head and generation) of each of them, looks at the
//    control blocks, then sleeps in futex_waitv on those words and on a
//    private kick word. A commit after the load changes a word, so the wait
//    ends at once: nothing is missed between the look and the wait.
//  - the owner's side is in the library: every PartitionWriter on a host
//    file wakes the head word after a commit or a reset when a peer waits
//    (also ivshmctl and the C API).
//  - partitions whose owner is not on this host (a guest, or nobody yet)
//    cannot wake us: while a reader waits for one of them, the timeout is
//    the adaptive polling interval (PollBounds), as PollingSource polls.
//    Otherwise it is the slow fallback (kFallback) that covers a writer that
//    does not wake (an older version) or a region formatted anew.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#include "change_source.hpp"
#include "options.hpp"

namespace ivshmfs::fs {

class FutexSource final : public ChangeSource {
 public:
  static constexpr std::chrono::milliseconds kFallback{1000};
  // After a look that reported flowing data or work left: one more look.
  static constexpr std::chrono::milliseconds kFollowUp{2};

  FutexSource(std::shared_ptr<Region> region, uint32_t own_id, PollBounds bounds);
  ~FutexSource() override;

  void start(ChangeListener listener) override;
  void stop() noexcept override;
  void kick() noexcept override;
  // The library's writer woke the waiting peers already.
  void committed() noexcept override {}
  [[nodiscard]] std::string status() const override;

 private:
  void run(const std::stop_token& stop);
  void announce(uint64_t mask) noexcept;

  std::shared_ptr<Region> region_;
  uint32_t own_id_;
  PollBounds bounds_;
  ChangeListener listener_;
  // kick() and stop() bump it and wake it (a private futex; accessed
  // through std::atomic_ref only).
  alignas(4) uint32_t kick_word_ = 0;
  std::atomic<uint64_t> announced_{0};
  bool announce_failed_logged_ = false;
  bool wait_failed_logged_ = false;
  // Why each wait ended (.status "wakeups"): a peer's FUTEX_WAKE, a word
  // that changed before the wait began, a kick, a timeout.
  std::atomic<uint64_t> peer_wakes_{0};
  std::atomic<uint64_t> changed_{0};
  std::atomic<uint64_t> kicks_{0};
  std::atomic<uint64_t> timeouts_{0};
  std::jthread thread_;
};

}  // namespace ivshmfs::fs
