// SPDX-License-Identifier: MIT
// Private helpers for touching shared memory. Every access to a live field of
// the region goes through these: 64-bit, naturally aligned, lock-free atomics
// that work between processes and between VMs (they are address-free).
#pragma once

#include <atomic>
#include <cstdint>

namespace ivshmfs::detail {

static_assert(std::atomic_ref<uint64_t>::is_always_lock_free, "64-bit atomics must be lock-free");

inline uint64_t load_acquire(uint64_t& field) noexcept {
  return std::atomic_ref<uint64_t>(field).load(std::memory_order_acquire);
}
inline uint64_t load_relaxed(uint64_t& field) noexcept {
  return std::atomic_ref<uint64_t>(field).load(std::memory_order_relaxed);
}
inline void store_release(uint64_t& field, uint64_t value) noexcept {
  std::atomic_ref<uint64_t>(field).store(value, std::memory_order_release);
}
inline void store_relaxed(uint64_t& field, uint64_t value) noexcept {
  std::atomic_ref<uint64_t>(field).store(value, std::memory_order_relaxed);
}
inline bool compare_exchange(uint64_t& field, uint64_t& expected, uint64_t desired) noexcept {
  return std::atomic_ref<uint64_t>(field).compare_exchange_strong(expected, desired, std::memory_order_acq_rel,
                                                                  std::memory_order_acquire);
}

// A random non-zero 64-bit value (format ids, claim tokens).
uint64_t random_nonzero() noexcept;

}  // namespace ivshmfs::detail
