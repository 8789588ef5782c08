// SPDX-License-Identifier: MIT
#include "doorbell_source.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <system_error>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

namespace ivshmfs::fs {

namespace {

constexpr uint16_t kVector = 0;  // "a partition changed"

int64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

DoorbellSource::DoorbellSource(std::shared_ptr<Region> region, uint32_t own_id, int doorbell_fd)
    : region_(std::move(region)), own_id_(own_id), doorbell_fd_(doorbell_fd) {
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) {
    const int err = errno;
    ::close(doorbell_fd_);
    throw std::system_error(err, std::generic_category(), "eventfd");
  }
}

DoorbellSource::~DoorbellSource() {
  stop();
  ::close(event_fd_);
  ::close(doorbell_fd_);
}

void DoorbellSource::start(ChangeListener listener) {
  listener_ = std::move(listener);
  thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
}

void DoorbellSource::stop() noexcept {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  wake();
  thread_.join();
  spdlog::debug("doorbells: {} ring(s) sent", rings_.load());
}

void DoorbellSource::wake() noexcept {
  const uint64_t one = 1;
  if (::write(event_fd_, &one, sizeof one) < 0) {
    // EAGAIN: the counter is full, the thread is awake anyway.
  }
}

void DoorbellSource::kick() noexcept { wake(); }

void DoorbellSource::ring(uint32_t peer) noexcept {
  // Rung through the own partition's device.
  if (auto r = region_->backend(*region_->find(own_id_)).ring(static_cast<uint16_t>(peer), kVector); !r) {
    spdlog::warn("doorbells: {}", r.error().message);
    return;
  }
  rings_.fetch_add(1, std::memory_order_relaxed);
}

std::string DoorbellSource::status() const {
  return fmt::format("wakeups source=doorbell doorbells={} kicks={} timeouts={} rings={}\n",
                     doorbell_wakes_.load(std::memory_order_relaxed), kicks_.load(std::memory_order_relaxed),
                     timeouts_.load(std::memory_order_relaxed), rings_.load(std::memory_order_relaxed));
}

void DoorbellSource::committed() noexcept {
  const uint64_t bit = uint64_t{1} << own_id_;
  bool defer = false;
  for (const PartitionInfo& p : region_->partitions()) {
    if (p.id == own_id_ || (region_->waiting_for(p.id) & bit) == 0) continue;
    const int64_t now = now_ns();
    int64_t last = last_ring_ns_[p.id].load(std::memory_order_relaxed);
    const auto gap = std::chrono::nanoseconds(kRingGap).count();
    if (now - last >= gap && last_ring_ns_[p.id].compare_exchange_strong(last, now, std::memory_order_relaxed)) {
      ring(p.id);
    } else {
      deferred_.fetch_or(uint64_t{1} << p.id, std::memory_order_relaxed);
      defer = true;
    }
  }
  if (defer) wake();
}

std::chrono::nanoseconds DoorbellSource::ring_deferred() noexcept {
  std::chrono::nanoseconds next = kFallback;
  uint64_t pending = deferred_.exchange(0, std::memory_order_relaxed);
  uint64_t later = 0;
  const auto gap = std::chrono::nanoseconds(kRingGap).count();
  for (uint32_t id = 0; pending != 0; ++id, pending >>= 1) {
    if ((pending & 1) == 0) continue;
    const int64_t now = now_ns();
    const int64_t due = last_ring_ns_[id].load(std::memory_order_relaxed) + gap;
    if (now >= due) {
      last_ring_ns_[id].store(now, std::memory_order_relaxed);
      ring(id);
    } else {
      later |= uint64_t{1} << id;
      next = std::min(next, std::chrono::nanoseconds(due - now));
    }
  }
  if (later != 0) deferred_.fetch_or(later, std::memory_order_relaxed);
  return next;
}

void DoorbellSource::announce(uint64_t mask) noexcept {
  // A region formatted anew is no longer ours to write (the filesystem went
  // stale): its control block may belong to a new owner.
  if (!region_->check_format()) return;
  if (auto r = region_->announce_waiting(own_id_, mask); !r) {
    if (!announce_failed_logged_) spdlog::error("doorbells: announcing what we wait for: {}", r.error().message);
    announce_failed_logged_ = true;
  }
  announced_ = mask;
}

void DoorbellSource::run(const std::stop_token& stop) {
  announce(0);
  bool follow_up = false;
  while (!stop.stop_requested()) {
    bool busy = false;
    uint64_t waited = 0;
    try {
      busy = listener_.look();
      waited = listener_.waited_for() & ~(uint64_t{1} << own_id_);
    } catch (const std::exception& e) {
      spdlog::error("doorbells: {}", e.what());
    }
    if (waited != announced_) {
      // Announce, then look once more: a commit before the announcement
      // rang nobody, the look finds it.
      announce(waited);
      continue;
    }
    std::chrono::nanoseconds timeout = ring_deferred();
    if (busy && !follow_up) timeout = std::min<std::chrono::nanoseconds>(timeout, kFollowUp);
    follow_up = busy && !follow_up;
    // Nobody waits: nothing to look for until a reader kicks us, except that
    // the fallback also notices a region formatted anew.
    pollfd fds[2] = {{doorbell_fd_, POLLIN, 0}, {event_fd_, POLLIN, 0}};
    const int ms = static_cast<int>(std::max<int64_t>(
        1, std::chrono::duration_cast<std::chrono::milliseconds>(timeout + std::chrono::microseconds(999)).count()));
    const int ready = ::poll(fds, 2, ms);
    if (ready < 0 && errno != EINTR) {
      spdlog::error("doorbells: poll: {}", std::strerror(errno));
      ::usleep(100'000);
    }
    if (ready == 0) timeouts_.fetch_add(1, std::memory_order_relaxed);
    if ((fds[0].revents & POLLIN) != 0) doorbell_wakes_.fetch_add(1, std::memory_order_relaxed);
    if ((fds[1].revents & POLLIN) != 0) kicks_.fetch_add(1, std::memory_order_relaxed);
    uint64_t counter = 0;
    if ((fds[0].revents & POLLIN) != 0 && ::read(doorbell_fd_, &counter, sizeof counter) < 0) {
      // EAGAIN: read by a racing wake-up already.
    }
    if ((fds[0].revents & (POLLERR | POLLHUP)) != 0) {
      spdlog::error("doorbells: the device went away; looking every {} ms", kFallback.count());
      ::usleep(static_cast<useconds_t>(std::chrono::microseconds(kFallback).count()));
    }
    if ((fds[1].revents & POLLIN) != 0 && ::read(event_fd_, &counter, sizeof counter) < 0) {
      // EAGAIN: nothing to drain.
    }
  }
  announce(0);
}

}  // namespace ivshmfs::fs
