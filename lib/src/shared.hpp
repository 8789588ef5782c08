// SPDX-License-Identifier: MIT
// Private helpers for touching shared memory. Every access to a live field of
// the region goes through these: 64-bit, naturally aligned, lock-free atomics
// that work between processes and between VMs (they are address-free).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ivshmfs/layout.h"

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

// The ordering of the claim/reservation handshake (Dekker): an owner's
// announcement and a taker's token swap are seq_cst read-modify-writes, each
// followed by a seq_cst load of the other's word, so at least one of the two
// sees the other.
inline uint64_t load_seq_cst(uint64_t& field) noexcept {
  return std::atomic_ref<uint64_t>(field).load(std::memory_order_seq_cst);
}
inline bool compare_exchange_seq_cst(uint64_t& field, uint64_t& expected, uint64_t desired) noexcept {
  return std::atomic_ref<uint64_t>(field).compare_exchange_strong(expected, desired, std::memory_order_seq_cst,
                                                                  std::memory_order_seq_cst);
}
// Raises `field` to at least `value` (a monotonic maximum); seq_cst.
inline void raise_to_seq_cst(uint64_t& field, uint64_t value) noexcept {
  uint64_t current = load_seq_cst(field);
  while (current < value && !compare_exchange_seq_cst(field, current, value)) {
  }
}

// Where the file's bytes lie in a partition's data area, from control words
// read in one generation. Every input may be hostile: the result never points
// outside [0, capacity).
struct FileMap {
  uint64_t used = 0;         // bytes of the data area below the head (head - base, clamped)
  uint64_t hole_offset = 0;  // file offsets at or past this one lie hole_length further on
  uint64_t hole_length = 0;  // 0 when no hole lies below the head
  uint64_t length = 0;       // the file's length: used - hole_length

  // The data-area offset of file offset `offset` (< length).
  [[nodiscard]] uint64_t physical(uint64_t offset) const noexcept {
    return offset < hole_offset ? offset : offset + hole_length;
  }
};

inline FileMap file_map(uint64_t head, uint64_t base, uint64_t hole_offset, uint64_t hole_length,
                        uint64_t capacity) noexcept {
  FileMap m;
  head &= ~IVSHMFS_HEAD_FENCE;  // a fence under way leaves the head where it was
  m.used = head > base ? std::min(head - base, capacity) : 0;
  // A hole counts once the head has passed it whole; a hole that does not fit
  // in the used bytes (not reached yet, or hostile) is not applied.
  if (hole_length != 0 && hole_offset <= m.used && hole_length <= m.used - hole_offset) {
    m.hole_offset = hole_offset;
    m.hole_length = hole_length;
  } else {
    m.hole_offset = m.used;
  }
  m.length = m.used - m.hole_length;
  return m;
}

// A ring partition's file, from head, base and reserve_end (any of them may
// be hostile): file offsets count the bytes written since the reset (position
// base + f is file offset f, at data[f % capacity]); the writer overwrites
// nothing at or past reserve_end - capacity before it raises reserve_end.
struct RingMap {
  uint64_t length = 0;         // head - base: the file's length
  uint64_t retained_from = 0;  // file offset of the oldest byte not (being) overwritten; <= length
};

inline RingMap ring_map(uint64_t head, uint64_t base, uint64_t reserve_end, uint64_t capacity) noexcept {
  RingMap m;
  head &= ~IVSHMFS_HEAD_FENCE;
  m.length = head > base ? head - base : 0;
  const uint64_t announced = std::max(reserve_end, head);
  const uint64_t oldest = announced > capacity ? announced - capacity : 0;  // absolute
  m.retained_from = oldest > base ? std::min(oldest - base, m.length) : 0;
  return m;
}

#if defined(__SANITIZE_THREAD__)
#define IVSHMFS_RACY_COPY_ATOMIC 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define IVSHMFS_RACY_COPY_ATOMIC 1
#endif
#endif

// Copies to or from a ring's data area, which its writer may overwrite while
// a reader copies (the reader finds out afterwards and discards the copy: the
// seqlock pattern). Plain memcpy; under ThreadSanitizer, relaxed atomic byte
// accesses, which is what the race is by design.
inline void racy_copy(void* dst, const void* src, std::size_t n) noexcept {
#ifdef IVSHMFS_RACY_COPY_ATOMIC
  auto* d = static_cast<unsigned char*>(dst);
  auto* s = const_cast<unsigned char*>(static_cast<const unsigned char*>(src));  // NOLINT: atomic_ref needs T&
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char v = std::atomic_ref<unsigned char>(s[i]).load(std::memory_order_relaxed);
    std::atomic_ref<unsigned char>(d[i]).store(v, std::memory_order_relaxed);
  }
#else
  std::memcpy(dst, src, n);
#endif
}

// A random non-zero 64-bit value (format ids, claim tokens).
uint64_t random_nonzero() noexcept;

}  // namespace ivshmfs::detail
