// SPDX-License-Identifier: MIT
// The doorbell change source: peers ring each other's vector 0 through a
// transport (doorbell_transport.hpp): a /dev/ivshmN on ivshmem-doorbell
// whose IVPosition is this peer's partition id, or on the host the eventfds
// of ivshm-server (-o server=), where the server's id is the partition id.
// No timer while idle:
//  - waiting: the partition ids our readers wait for are announced in our
//    own control block (waiting_for); the thread sleeps in poll() on our
//    vector 0 and looks at the control blocks when it fires.
//    Announcing is followed by one more look, so a commit that landed before
//    the announcement is not missed. A slow fallback look (every 1 s while a
//    reader waits, kFallback) covers a ring that got lost (a peer that does
//    not ring, e.g. one running with polling, or a lost interrupt).
//  - ringing: after a commit, every peer j whose waiting_for has our bit gets
//    vector 0 rung (peer j's IVPosition is its partition id j). Bursts are
//    coalesced per peer: at most one ring per kRingGap; a commit inside the
//    gap is rung at its end by the thread (trailing edge), so the last commit
//    of a burst always rings.
//  - owners that cannot ring us (the transport knows: on the host, owners
//    that are no clients of the server, or every owner once the server is
//    gone): while a reader waits for one of them, the sleep's timeout is the
//    adaptive polling interval (PollBounds), as FutexSource does for owners
//    in guests.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#include "change_source.hpp"
#include "doorbell_transport.hpp"
#include "options.hpp"

namespace ivshmfs::fs {

class DoorbellSource final : public ChangeSource {
 public:
  static constexpr std::chrono::milliseconds kFallback{1000};
  static constexpr std::chrono::microseconds kRingGap{200};
  // After a look that reported flowing data or work left: one more look.
  static constexpr std::chrono::milliseconds kFollowUp{2};

  DoorbellSource(std::shared_ptr<Region> region, uint32_t own_id, std::unique_ptr<DoorbellTransport> transport,
                 PollBounds bounds);
  ~DoorbellSource() override;

  void start(ChangeListener listener) override;
  void stop() noexcept override;
  void kick() noexcept override;
  void committed() noexcept override;
  [[nodiscard]] std::string status() const override;

 private:
  void run(const std::stop_token& stop);
  void wake() noexcept;
  void ring(uint32_t peer) noexcept;
  // Rings the deferred peers whose gap has passed; the time until the next
  // one is due (kFallback when none).
  std::chrono::nanoseconds ring_deferred() noexcept;
  void announce(uint64_t mask) noexcept;

  std::shared_ptr<Region> region_;
  uint32_t own_id_;
  std::unique_ptr<DoorbellTransport> transport_;
  PollBounds bounds_;
  int event_fd_ = -1;  // kick/stop/deferred rings wake the thread
  ChangeListener listener_;
  std::atomic<uint64_t> deferred_{0};  // peers to ring at the end of their gap
  std::array<std::atomic<int64_t>, 64> last_ring_ns_{};
  std::atomic<uint64_t> rings_{0};
  // Why each wait ended (.status "wakeups"): our vector fired, a kick (or a
  // deferred ring due), a timeout (fallback, follow-up or polling look).
  std::atomic<uint64_t> doorbell_wakes_{0};
  std::atomic<uint64_t> kicks_{0};
  std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint64_t> announced_{0};
  bool announce_failed_logged_ = false;
  std::jthread thread_;
};

}  // namespace ivshmfs::fs
