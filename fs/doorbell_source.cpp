// SPDX-License-Identifier: MIT
#include "doorbell_source.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
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

int64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

DoorbellSource::DoorbellSource(std::shared_ptr<Region> region, uint32_t own_id,
                               std::unique_ptr<DoorbellTransport> transport, PollBounds bounds)
    : region_(std::move(region)), own_id_(own_id), transport_(std::move(transport)), bounds_(bounds) {
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

DoorbellSource::~DoorbellSource() {
  stop();
  ::close(event_fd_);
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
  if (transport_->ring(peer)) rings_.fetch_add(1, std::memory_order_relaxed);
}

std::string DoorbellSource::status() const {
  return fmt::format("wakeups source=doorbell doorbells={} kicks={} timeouts={} rings={} announced={:#x}{}\n",
                     doorbell_wakes_.load(std::memory_order_relaxed), kicks_.load(std::memory_order_relaxed),
                     timeouts_.load(std::memory_order_relaxed), rings_.load(std::memory_order_relaxed),
                     announced_.load(std::memory_order_relaxed), transport_->status());
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
  announced_.store(mask, std::memory_order_relaxed);
}

void DoorbellSource::run(const std::stop_token& stop) {
  using clock = std::chrono::steady_clock;
  // Short polling intervals (owners that cannot ring us) must not stretch
  // by the default 50 us of slack.
  ::prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
  announce(0);
  bool follow_up = false;
  auto interval = std::chrono::nanoseconds(bounds_.min);
  auto last_change = clock::now();
  while (!stop.stop_requested()) {
    bool busy = false;
    uint64_t waited = 0;
    try {
      busy = listener_.look();
      waited = listener_.waited_for() & ~(uint64_t{1} << own_id_);
    } catch (const std::exception& e) {
      spdlog::error("doorbells: {}", e.what());
    }
    if (waited != announced_.load(std::memory_order_relaxed)) {
      // Announce, then look once more: a commit before the announcement
      // rang nobody, the look finds it.
      announce(waited);
      continue;
    }
    const auto now = clock::now();
    if (busy) last_change = now;
    bool unrung = false;
    for (uint64_t w = waited, id = 0; w != 0; ++id, w >>= 1) {
      if ((w & 1) != 0 && !transport_->rung_by(static_cast<uint32_t>(id))) unrung = true;
    }
    std::chrono::nanoseconds timeout = ring_deferred();
    if (unrung) {
      // Someone who cannot ring us: poll it as PollingSource would.
      interval = now - last_change < bounds_.hot ? std::chrono::nanoseconds(bounds_.min)
                                                 : std::min<std::chrono::nanoseconds>(interval * 2, bounds_.max);
      timeout = std::min(timeout, interval);
    } else if (busy && !follow_up) {
      timeout = std::min<std::chrono::nanoseconds>(timeout, kFollowUp);
    }
    follow_up = busy && !follow_up;
    // Nobody waits: nothing to look for until a reader kicks us, except that
    // the fallback also notices a region formatted anew.
    const int wait_fd = transport_->wait_fd();
    const int service_fd = transport_->service_fd();
    pollfd fds[3] = {{wait_fd, POLLIN, 0}, {event_fd_, POLLIN, 0}, {service_fd, POLLIN, 0}};
    timespec ts{static_cast<time_t>(timeout.count() / 1'000'000'000),
                static_cast<long>(timeout.count() % 1'000'000'000)};
    const int ready = ::ppoll(fds, service_fd >= 0 ? 3 : 2, &ts, nullptr);
    if (ready < 0 && errno != EINTR) {
      spdlog::error("doorbells: poll: {}", std::strerror(errno));
      ::usleep(100'000);
    }
    if (ready == 0) timeouts_.fetch_add(1, std::memory_order_relaxed);
    if ((fds[0].revents & POLLIN) != 0) {
      doorbell_wakes_.fetch_add(1, std::memory_order_relaxed);
      transport_->drain();
    }
    if ((fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
      spdlog::error("doorbells: the doorbell went away; looking every {} ms", kFallback.count());
      ::usleep(static_cast<useconds_t>(std::chrono::microseconds(kFallback).count()));
    }
    if ((fds[1].revents & POLLIN) != 0) {
      kicks_.fetch_add(1, std::memory_order_relaxed);
      uint64_t counter = 0;
      if (::read(event_fd_, &counter, sizeof counter) < 0) {
        // EAGAIN: nothing to drain.
      }
    }
    // The server's notices (peers joining and leaving), or its hang-up.
    if (service_fd >= 0 && fds[2].revents != 0) transport_->service();
  }
  announce(0);
}

}  // namespace ivshmfs::fs
