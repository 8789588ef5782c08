// SPDX-License-Identifier: MIT
// Survives SIGBUS in a shared mapping. A backend file truncated underneath us,
// or a sparse file whose filesystem is full, turns the next access to a page
// that has no backing any more into SIGBUS, which kills the process. The guard
// catches SIGBUS for registered mappings, puts an anonymous zero page where the
// faulting page was (so the interrupted copy completes harmlessly) and marks
// the mapping as lost. The library checks that mark after each copy: one
// relaxed load, no system call, and the operation fails with a clear error.
// Faults outside registered mappings go on to the previous handler.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace ivshmfs::detail {

// Why a guarded mapping lost a page.
enum class MappingLoss : uint32_t {
  none = 0,
  shrank = 1,    // the fault lay past the end of the backing file
  no_space = 2,  // inside the file: its filesystem could not supply a page
  gone = 3,      // not a regular file: the device's mapping was revoked (unbound)
};

// One registered mapping. Slots live in static storage, so the signal
// handler never touches memory that could be freed under it.
class MappingGuard {
 public:
  // Registers [base, base+size) of descriptor `fd` mapped with `prot`;
  // installs the SIGBUS handler on first use. nullptr when every slot is
  // taken (the mapping then works unguarded).
  static MappingGuard* watch(void* base, std::size_t size, int fd, int prot) noexcept;
  // Unregisters; call before unmapping and closing the descriptor.
  void release() noexcept;

  [[nodiscard]] const std::atomic<uint32_t>& loss() const noexcept { return loss_; }
  // Marks the mapping lost without a fault: the owner found out otherwise
  // (e.g. fstat shows the file shorter than the mapping). The first reason
  // recorded stays.
  void mark_lost(MappingLoss why) noexcept {
    uint32_t none = 0;
    loss_.compare_exchange_strong(none, static_cast<uint32_t>(why), std::memory_order_relaxed);
  }
  // A mark that never changes, for mappings without a guard.
  static const std::atomic<uint32_t>& never_lost() noexcept;

  // Handles a fault at `addr` if it lies in a registered mapping.
  static bool handle_fault(void* addr) noexcept;

 private:
  friend struct GuardTable;
  std::atomic<uintptr_t> begin_{0};  // 0: slot free
  std::atomic<uintptr_t> end_{0};
  std::atomic<int> fd_{-1};
  std::atomic<int> prot_{0};
  std::atomic<uint32_t> loss_{0};
  std::atomic<bool> taken_{false};
};

}  // namespace ivshmfs::detail
