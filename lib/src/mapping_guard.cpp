// SPDX-License-Identifier: MIT
#include "mapping_guard.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <mutex>

namespace ivshmfs::detail {

struct GuardTable {
  // Every region a process maps at once (daemon, tool, tests): a handful.
  static constexpr std::size_t kSlots = 256;
  std::array<MappingGuard, kSlots> slots;
  struct sigaction previous {};
  uintptr_t page_size = 4096;
};

namespace {

GuardTable table;  // static storage: the handler may read it at any time
std::once_flag installed;

void forward_to_previous(int sig, siginfo_t* info, void* context) {
  const struct sigaction& prev = table.previous;
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler == SIG_IGN || prev.sa_handler == SIG_DFL) {
    // A memory fault cannot be ignored: restore the default action, and the
    // faulting instruction, run again on return, ends the process as it
    // would have without us.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGBUS, &dfl, nullptr);
    return;
  }
  prev.sa_handler(sig);
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const bool ours = info != nullptr && MappingGuard::handle_fault(info->si_addr);
  errno = saved_errno;
  if (!ours) forward_to_previous(sig, info, context);
}

void install_handler() noexcept {
  const long page = ::sysconf(_SC_PAGESIZE);
  if (page > 0) table.page_size = static_cast<uintptr_t>(page);
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, &table.previous);
}

}  // namespace

MappingGuard* MappingGuard::watch(void* base, std::size_t size, int fd, int prot) noexcept {
  std::call_once(installed, install_handler);
  for (MappingGuard& slot : table.slots) {
    bool expected = false;
    if (!slot.taken_.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
    slot.loss_.store(0, std::memory_order_relaxed);
    slot.fd_.store(fd, std::memory_order_relaxed);
    slot.prot_.store(prot, std::memory_order_relaxed);
    slot.end_.store(reinterpret_cast<uintptr_t>(base) + size, std::memory_order_relaxed);
    slot.begin_.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
    return &slot;
  }
  return nullptr;
}

void MappingGuard::release() noexcept {
  begin_.store(0, std::memory_order_release);
  end_.store(0, std::memory_order_relaxed);
  fd_.store(-1, std::memory_order_relaxed);
  taken_.store(false, std::memory_order_release);
}

const std::atomic<uint32_t>& MappingGuard::never_lost() noexcept {
  static const std::atomic<uint32_t> none{0};
  return none;
}

// Async-signal-safe: atomics on static storage, fstat and mmap only.
bool MappingGuard::handle_fault(void* addr) noexcept {
  const auto at = reinterpret_cast<uintptr_t>(addr);
  for (MappingGuard& slot : table.slots) {
    const uintptr_t begin = slot.begin_.load(std::memory_order_acquire);
    if (begin == 0 || at < begin || at >= slot.end_.load(std::memory_order_relaxed)) continue;
    const uintptr_t page = at & ~(table.page_size - 1);
    MappingLoss why = MappingLoss::gone;
    struct stat st {};
    const int fd = slot.fd_.load(std::memory_order_relaxed);
    if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      why = page - begin >= static_cast<uintptr_t>(st.st_size) ? MappingLoss::shrank : MappingLoss::no_space;
    }
    // A private zero page in its place: the interrupted instruction completes
    // against memory no peer sees, and the caller learns from the mark.
    void* replaced = ::mmap(reinterpret_cast<void*>(page), table.page_size, slot.prot_.load(std::memory_order_relaxed),
                            MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (replaced == MAP_FAILED) return false;
    uint32_t none = 0;
    slot.loss_.compare_exchange_strong(none, static_cast<uint32_t>(why), std::memory_order_relaxed);
    return true;
  }
  return false;
}

}  // namespace ivshmfs::detail
