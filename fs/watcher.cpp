// SPDX-License-Identifier: MIT
#include "watcher.hpp"

#include <algorithm>
#include <exception>

#include <spdlog/spdlog.h>

namespace ivshmfs::fs {

Watcher::Watcher(PollBounds bounds, Tick tick) : bounds_(bounds), tick_(std::move(tick)) {}

Watcher::~Watcher() { stop(); }

void Watcher::start() {
  thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
}

void Watcher::stop() noexcept {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  thread_.join();
}

void Watcher::kick() noexcept {
  {
    std::lock_guard lock(mutex_);
    kicked_ = true;
  }
  wake_.notify_one();
}

void Watcher::run(const std::stop_token& stop) {
  auto interval = bounds_.min;
  while (!stop.stop_requested()) {
    bool changed = false;
    try {
      changed = tick_();
    } catch (const std::exception& e) {
      spdlog::error("watcher: {}", e.what());
    }
    interval = changed ? bounds_.min : std::min(interval * 2, bounds_.max);
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, stop, interval, [this] { return kicked_; });
    kicked_ = false;
  }
}

}  // namespace ivshmfs::fs
