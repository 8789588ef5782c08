// SPDX-License-Identifier: MIT
// Wake-ups between peers on one host: a process-shared futex on the low 32
// bits of a partition's `head` and `generation` words (docs/layout.md,
// "Wake-ups on one host"). Two daemons over one host file (or the pieces of
// a split region) map the same pages, so the owner's FUTEX_WAKE after a
// commit or a reset reaches a waiting peer in microseconds. The futex is an
// accelerator only: the kernel keys it on the file's inode and offset, so it
// never crosses into a guest; correctness never depends on it (a waiter
// re-checks the control block and keeps a fallback timeout).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "ivshmfs/backend.hpp"
#include "ivshmfs/error.hpp"
#include "ivshmfs/region.hpp"

namespace ivshmfs {

// Whether futex wake-ups can reach peers through this backend: a host file.
// A device's or a PCI resource's mapping has no page cache pages to key a
// shared futex on, and its peers run under other kernels.
[[nodiscard]] bool futex_wakes_possible(const Backend& backend) noexcept;

// One word to wait on: its address and the value it held when the caller
// last looked (the wait ends at once if it holds another one by then).
struct FutexWord {
  const uint32_t* word = nullptr;
  uint32_t value = 0;
  bool shared = true;  // false: a word of this process only (FUTEX_PRIVATE_FLAG)
};

// The futex words of partition p, with the values they hold now (acquire
// loads): the low halves of head and of generation. A commit moves the head,
// a reset the generation, so a waiter that loaded these before it looked at
// the partition misses neither.
struct PartitionWakeWords {
  FutexWord head;
  FutexWord generation;
};
[[nodiscard]] PartitionWakeWords wake_words(const Region& region, const PartitionInfo& p) noexcept;

// The owner of `own` committed or reset: FUTEX_WAKE every waiter on its head
// word when some peer announced (waiting_for) that it waits for own.id.
// A full fence first, pairing with Region::announce_waiting's: either the
// waiter's look after announcing sees the commit, or this sees the
// announcement. No-op (false) unless the backend is a host file. Returns
// whether a wake was sent.
bool wake_peers(const Region& region, const PartitionInfo& own) noexcept;

// Whether partition `id` is claimed by an owner on this system (same boot
// id): its commits wake futex waiters here. False for unclaimed partitions
// and owners in guests (they are polled or rung instead).
[[nodiscard]] bool owner_on_this_host(const Region& region, uint32_t id) noexcept;

enum class WaitOutcome {
  woken,      // a FUTEX_WAKE on one of the words (or a spurious wake-up)
  changed,    // a word no longer held its value when the wait began
  timed_out,  // the timeout passed
};

// Waits on up to kMaxFutexWords words at once (futex_waitv, Linux >= 5.16)
// for at most `timeout`. `index` (if not null) receives the word that was
// woken (woken only). Errors: invalid_argument for too many words, or the
// system's error (ENOSYS on an older kernel).
inline constexpr std::size_t kMaxFutexWords = 128;
Result<WaitOutcome> wait_any(std::span<const FutexWord> words, std::chrono::nanoseconds timeout,
                             std::size_t* index = nullptr);

// FUTEX_WAKE on a word of this process only (FUTEX_PRIVATE_FLAG): ends a
// wait_any() of another thread that waits on it with shared = false.
void wake_private(const uint32_t* word) noexcept;

// Whether this kernel has futex_waitv (a zero-word probe; no side effect).
[[nodiscard]] bool futex_waitv_available() noexcept;

}  // namespace ivshmfs
