// SPDX-License-Identifier: MIT
#include "futex_source.hpp"

#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <exception>
#include <vector>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "ivshmfs/wake.hpp"

namespace ivshmfs::fs {

FutexSource::FutexSource(std::shared_ptr<Region> region, uint32_t own_id, PollBounds bounds)
    : region_(std::move(region)), own_id_(own_id), bounds_(bounds) {}

FutexSource::~FutexSource() { stop(); }

void FutexSource::start(ChangeListener listener) {
  listener_ = std::move(listener);
  thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
}

void FutexSource::stop() noexcept {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  kick();
  thread_.join();
}

void FutexSource::kick() noexcept {
  std::atomic_ref<uint32_t>(kick_word_).fetch_add(1, std::memory_order_release);
  wake_private(&kick_word_);
}

std::string FutexSource::status() const {
  return fmt::format("wakeups source=futex peer_wakes={} changed={} kicks={} timeouts={} announced={:#x}\n",
                     peer_wakes_.load(std::memory_order_relaxed), changed_.load(std::memory_order_relaxed),
                     kicks_.load(std::memory_order_relaxed), timeouts_.load(std::memory_order_relaxed),
                     announced_.load(std::memory_order_relaxed));
}

void FutexSource::announce(uint64_t mask) noexcept {
  // A region formatted anew is no longer ours to write (the filesystem went
  // stale): its control block may belong to a new owner.
  if (!region_->check_format()) return;
  if (auto r = region_->announce_waiting(own_id_, mask); !r) {
    if (!announce_failed_logged_) spdlog::error("futex wake-ups: announcing what we wait for: {}", r.error().message);
    announce_failed_logged_ = true;
  }
  announced_.store(mask, std::memory_order_relaxed);
}

void FutexSource::run(const std::stop_token& stop) {
  using clock = std::chrono::steady_clock;
  // Short polling intervals (a guest's partition) must not stretch by the
  // default 50 us of slack.
  ::prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
  static_assert(std::atomic_ref<uint32_t>::is_always_lock_free);
  std::vector<FutexWord> words;
  words.reserve(kMaxFutexWords);
  auto interval = std::chrono::nanoseconds(bounds_.min);
  auto last_change = clock::now();
  bool follow_up = false;
  announce(0);
  while (!stop.stop_requested()) {
    // Everything the wait compares is loaded before the look: a kick, a
    // commit or a reset after this point makes the wait end at once.
    const uint32_t kicks = std::atomic_ref<uint32_t>(kick_word_).load(std::memory_order_acquire);
    // stop() kicks after requesting the stop: a kick already loaded above
    // would not end the wait below.
    if (stop.stop_requested()) break;
    uint64_t waited = 0;
    try {
      waited = listener_.waited_for() & ~(uint64_t{1} << own_id_);
    } catch (const std::exception& e) {
      spdlog::error("futex wake-ups: {}", e.what());
    }
    // Announce first (a full fence follows it), then load the words: a
    // commit the writer made before it could see the announcement moved a
    // word we load now, and the look below finds it.
    if (waited != announced_.load(std::memory_order_relaxed)) announce(waited);
    words.clear();
    bool remote = false;
    for (const PartitionInfo& p : region_->partitions()) {
      if ((waited >> p.id & 1) == 0) continue;
      const PartitionWakeWords w = wake_words(*region_, p);
      words.push_back(w.head);
      words.push_back(w.generation);
      remote = remote || !owner_on_this_host(*region_, p.id);
    }
    words.push_back({&kick_word_, kicks, false});
    bool busy = false;
    try {
      busy = listener_.look();
    } catch (const std::exception& e) {
      spdlog::error("futex wake-ups: {}", e.what());
    }
    const auto now = clock::now();
    if (busy) last_change = now;
    std::chrono::nanoseconds timeout = kFallback;
    if (remote) {
      // Someone who cannot wake us: poll it as PollingSource would.
      interval = now - last_change < bounds_.hot ? std::chrono::nanoseconds(bounds_.min)
                                                 : std::min<std::chrono::nanoseconds>(interval * 2, bounds_.max);
      timeout = interval;
    } else if (busy && !follow_up) {
      timeout = kFollowUp;
    }
    follow_up = busy && !follow_up;
    std::size_t index = 0;
    auto outcome = wait_any(words, timeout, &index);
    if (!outcome) {
      if (!wait_failed_logged_) spdlog::error("futex wake-ups: {}; polling instead", outcome.error().message);
      wait_failed_logged_ = true;
      timespec ts{0, static_cast<long>(std::min<std::chrono::nanoseconds>(timeout, bounds_.max).count())};
      ::nanosleep(&ts, nullptr);
      continue;
    }
    switch (*outcome) {
      case WaitOutcome::woken:
        (index + 1 == words.size() ? kicks_ : peer_wakes_).fetch_add(1, std::memory_order_relaxed);
        break;
      case WaitOutcome::changed:
        (std::atomic_ref<uint32_t>(kick_word_).load(std::memory_order_relaxed) != kicks ? kicks_ : changed_)
            .fetch_add(1, std::memory_order_relaxed);
        break;
      case WaitOutcome::timed_out: timeouts_.fetch_add(1, std::memory_order_relaxed); break;
    }
  }
  announce(0);
}

}  // namespace ivshmfs::fs
