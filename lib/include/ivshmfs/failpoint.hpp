// SPDX-License-Identifier: MIT
// Named fault-injection points in the library (in the manner of RocksDB's
// SyncPoint and FreeBSD's fail(9)): a test stops, delays or kills a writer at
// an exact step of a protocol, then checks what the peers see.
//
// Points are compiled in. While none is armed, one costs a relaxed load of a
// global flag and a predictable branch. Arm them with the environment
// variable IVSHMFS_FAILPOINTS (read once, when the library is loaded) or with
// failpoint_set() from a test:
//
//   IVSHMFS_FAILPOINTS="writer.after-copy=stop;writer.mid-reset=1*sleep(200)"
//
// Actions: off, stop (raise SIGSTOP: the process waits for SIGCONT), sleep(MS),
// abort (raise SIGABRT), exit(CODE) (_exit at once). A prefix "N*" fires the
// action on the next N hits only, then the point disarms itself.
//
// The points (see docs/layout.md for where each sits in the protocol):
//   writer.after-announce  append/reserve: reservation announced, claim re-checked, nothing copied yet
//   writer.after-copy      append: bytes copied into the data area, nothing published
//   writer.before-publish  append/commit: about to publish the new head
//   writer.reset-begin     reset: the claim checked, nothing changed yet
//   writer.reset-odd       reset: generation made odd, claim not yet re-checked
//   writer.mid-reset       reset: base moved, generation still odd
//   claim.after-token      claim: token swapped in, nothing fenced or repaired yet
//   claim.mid-fence        claim: the head frozen (fence bit set), the hole not recorded yet
#pragma once

#include <atomic>
#include <string>
#include <string_view>

#include "ivshmfs/error.hpp"

namespace ivshmfs {

// Arms point `name` with `action` (the syntax above; "off" disarms it).
// Errc::invalid_argument for an unknown point or action.
Result<void> failpoint_set(std::string_view name, std::string_view action);
// Arms every point of a spec "name=action;name=action" (also ',' separated).
Result<void> failpoint_set_all(std::string_view spec);
// Disarms every point.
void failpoint_clear() noexcept;
// How often point `name` fired since it was last armed.
unsigned failpoint_hits(std::string_view name) noexcept;

namespace detail {
extern std::atomic<bool> g_failpoints_armed;
void failpoint_hit(const char* name) noexcept;
}  // namespace detail

}  // namespace ivshmfs

// The point itself: one relaxed load while nothing is armed.
#define IVSHMFS_FAILPOINT(name)                                                             \
  do {                                                                                      \
    if (::ivshmfs::detail::g_failpoints_armed.load(std::memory_order_relaxed)) [[unlikely]] \
      ::ivshmfs::detail::failpoint_hit(name);                                               \
  } while (0)
