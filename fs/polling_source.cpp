// SPDX-License-Identifier: MIT
#include "polling_source.hpp"

#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <exception>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

namespace ivshmfs::fs {

PollingSource::PollingSource(PollBounds bounds) : bounds_(bounds) {}

PollingSource::~PollingSource() { stop(); }

void PollingSource::start(ChangeListener listener) {
  listener_ = std::move(listener);
  thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
}

void PollingSource::stop() noexcept {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  thread_.join();
}

void PollingSource::kick() noexcept {
  {
    std::lock_guard lock(mutex_);
    kicked_ = true;
  }
  wake_.notify_one();
}

std::string PollingSource::status() const {
  return fmt::format("wakeups source=polling looks={} poll_min_us={} poll_max_ms={}\n",
                     looks_.load(std::memory_order_relaxed), bounds_.min.count(), bounds_.max.count() / 1000);
}

void PollingSource::run(const std::stop_token& stop) {
  using clock = std::chrono::steady_clock;
  ::prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);  // 1 us
  // Sleeps up to this long are nanosleeps; longer ones wait on the condition
  // variable so that kick() and stop() end them early.
  constexpr auto kShortSleep = std::chrono::microseconds(1000);
  auto interval = bounds_.min;
  auto last_change = clock::now();
  while (!stop.stop_requested()) {
    bool changed = false;
    looks_.fetch_add(1, std::memory_order_relaxed);
    try {
      changed = listener_.look();
    } catch (const std::exception& e) {
      spdlog::error("watcher: {}", e.what());
    }
    const auto now = clock::now();
    if (changed) last_change = now;
    interval = now - last_change < bounds_.hot ? bounds_.min : std::min(interval * 2, bounds_.max);
    if (interval <= kShortSleep) {
      timespec ts{0, static_cast<long>(std::chrono::nanoseconds(interval).count())};
      ::nanosleep(&ts, nullptr);
      continue;
    }
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, stop, interval, [this] { return kicked_; });
    if (kicked_) {
      kicked_ = false;
      // A local reset: look again soon, and keep looking quickly a while.
      last_change = clock::now();
      interval = bounds_.min;
    }
  }
}

}  // namespace ivshmfs::fs
