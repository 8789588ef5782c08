// SPDX-License-Identifier: MIT
#include "ivshmfs/wake.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>

#include "shared.hpp"

namespace ivshmfs {

using detail::load_acquire;
using detail::load_relaxed;

// The futex word of a 64-bit control word is its low half, which on a
// little-endian machine (the layout's byte order) starts at the word itself.
static_assert(std::endian::native == std::endian::little, "the layout is little-endian");

namespace {

const uint32_t* low_half(const uint64_t& word) noexcept { return reinterpret_cast<const uint32_t*>(&word); }

long futex(const uint32_t* word, int op, uint32_t value) noexcept {
  return ::syscall(SYS_futex, word, op, value, nullptr, nullptr, 0);
}

}  // namespace

bool futex_wakes_possible(const Backend& backend) noexcept { return backend.kind() == BackendKind::host_file; }

PartitionWakeWords wake_words(const Region& region, const PartitionInfo& p) noexcept {
  ivshmfs_control* c = region.control(p);
  // Values from 64-bit loads: the low half is what the kernel compares.
  const auto head = static_cast<uint32_t>(load_acquire(c->head));
  const auto generation = static_cast<uint32_t>(load_acquire(c->generation));
  return {{low_half(c->head), head, true}, {low_half(c->generation), generation, true}};
}

bool wake_peers(const Region& region, const PartitionInfo& own) noexcept {
  if (!futex_wakes_possible(region.backend(own))) return false;
  const uint64_t bit = uint64_t{1} << own.id;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool waited = false;
  for (const PartitionInfo& p : region.partitions()) {
    if (p.id != own.id && (load_relaxed(region.control(p)->waiting_for) & bit) != 0) {
      waited = true;
      break;
    }
  }
  if (!waited) return false;
  futex(low_half(region.control(own)->head), FUTEX_WAKE, INT_MAX);
  return true;
}

bool owner_on_this_host(const Region& region, uint32_t id) noexcept {
  const PartitionInfo* p = region.find(id);
  if (p == nullptr) return false;
  ivshmfs_control* c = region.control(*p);
  return load_acquire(c->owner_token) != 0 && load_relaxed(c->owner_host) == local_host_id();
}

Result<WaitOutcome> wait_any(std::span<const FutexWord> words, std::chrono::nanoseconds timeout, std::size_t* index) {
  if (words.empty() || words.size() > kMaxFutexWords) {
    return make_error(Errc::invalid_argument, "futex_waitv: 1 to 128 words, not " + std::to_string(words.size()));
  }
  std::array<futex_waitv, kMaxFutexWords> waiters{};
  for (std::size_t i = 0; i < words.size(); ++i) {
    waiters[i].val = words[i].value;
    waiters[i].uaddr = reinterpret_cast<uintptr_t>(words[i].word);
    waiters[i].flags = FUTEX_32 | (words[i].shared ? 0U : static_cast<uint32_t>(FUTEX_PRIVATE_FLAG));
  }
  // futex_waitv takes an absolute deadline.
  timespec deadline{};
  ::clock_gettime(CLOCK_MONOTONIC, &deadline);
  const auto ns = std::max<int64_t>(0, timeout.count());
  deadline.tv_sec += static_cast<time_t>(ns / 1'000'000'000);
  deadline.tv_nsec += static_cast<long>(ns % 1'000'000'000);
  if (deadline.tv_nsec >= 1'000'000'000) {
    deadline.tv_nsec -= 1'000'000'000;
    ++deadline.tv_sec;
  }
  const long r =
      ::syscall(SYS_futex_waitv, waiters.data(), static_cast<unsigned>(words.size()), 0U, &deadline, CLOCK_MONOTONIC);
  if (r >= 0) {
    if (index != nullptr) *index = static_cast<std::size_t>(r);
    return WaitOutcome::woken;
  }
  switch (errno) {
    case EAGAIN: return WaitOutcome::changed;
    case ETIMEDOUT: return WaitOutcome::timed_out;
    case EINTR: return WaitOutcome::woken;  // a signal: the caller looks again
    default: return make_sys_error("futex_waitv");
  }
}

void wake_private(const uint32_t* word) noexcept { futex(word, FUTEX_WAKE_PRIVATE, INT_MAX); }

bool futex_waitv_available() noexcept {
  const long r = ::syscall(SYS_futex_waitv, nullptr, 0U, 0U, nullptr, CLOCK_MONOTONIC);
  return r == 0 || errno != ENOSYS;
}

}  // namespace ivshmfs
