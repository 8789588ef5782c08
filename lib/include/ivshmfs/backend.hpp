// SPDX-License-Identifier: MIT
// Backends: where the shared region's bytes come from. All of them end in one
// MAP_SHARED mapping; the region code above never knows which kind it has.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ivshmfs/error.hpp"

namespace ivshmfs {

namespace detail {
class MappingGuard;
}

// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if they were
// closed), so that nothing opened later becomes a standard descriptor: a log
// line or a read of stdin must never reach a shared region. Every program
// calls it first thing in main(), before it opens anything.
Result<void> ensure_standard_descriptors() noexcept;

enum class BackendKind {
  host_file,     // a regular file, e.g. in /dev/shm, the one QEMU shares
  device,        // /dev/ivshmN of the ivshm driver (cacheable mapping of BAR2)
  pci_resource,  // /sys/bus/pci/devices/<bdf>/resource2 (no driver; uncached)
};
const char* to_string(BackendKind kind) noexcept;

struct BackendOptions {
  bool writable = true;      // open O_RDWR and map PROT_WRITE; false: O_RDONLY, PROT_READ
  bool create = false;       // host_file: create the file if it is missing
  uint64_t create_size = 0;  // host_file: size a missing or empty file to this
  // Called while a created file is being allocated: (bytes done, bytes in all).
  std::function<void(uint64_t, uint64_t)> progress{};
};

// Facts the ivshm driver reports about its device (see kernel/uapi/ivshm.h).
struct DeviceInfo {
  uint64_t bar2_size = 0;
  uint32_t ivposition = 0;
  uint32_t revision = 0;
  bool has_msix = false;  // ivshmem-doorbell
  uint32_t vectors = 0;
  // BAR2 has struct pages, so the kernel can pin the mapping (a FUSE reply
  // written from it); false means such calls fail with EFAULT.
  bool struct_pages = false;
  // The driver set up the MSI-X interrupts: open_doorbell() and ring() work.
  bool doorbell = false;
};

// A move-only owner of an open backend and its mapping.
class Backend {
 public:
  // Opens `path`, choosing the kind from what it is: a character device is
  // the driver's /dev/ivshmN, a file named resource2 under /sys is a PCI BAR,
  // a regular file a host file; anything else (a FIFO, a directory, a socket)
  // is refused at once, without blocking. A file it creates is allocated
  // whole (refused with the figures when its filesystem lacks the room) and
  // removed again if opening fails.
  static Result<std::unique_ptr<Backend>> open(std::string_view path, const BackendOptions& options);

  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
  ~Backend();

  [[nodiscard]] std::span<std::byte> bytes() const noexcept { return {base_, size_}; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool writable() const noexcept { return writable_; }
  [[nodiscard]] BackendKind kind() const noexcept { return kind_; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  // Present for BackendKind::device only.
  [[nodiscard]] const std::optional<DeviceInfo>& device_info() const noexcept { return device_; }
  // True when open() created the file.
  [[nodiscard]] bool created() const noexcept { return created_; }
  // The open file (a split region's rescan tells a piece replaced under its
  // name by the file's device and inode).
  [[nodiscard]] int fd() const noexcept { return fd_; }
  // Removes the file if open() created it and the path still names it: the
  // way to undo a create whose format failed. Nothing else is ever removed.
  void remove_if_created() noexcept;

  // Makes sure the pages of [offset, offset+length) have backing store, so a
  // later store cannot fault: a sparse host file on a full filesystem gives
  // ENOSPC here instead of SIGBUS later. No-op for devices.
  [[nodiscard]] Result<void> ensure_backed(uint64_t offset, uint64_t length) const;

  // True once a page of the mapping lost its backing (the file was truncated
  // underneath us, or its filesystem could not supply a page): accesses went
  // to a private zero page instead of killing the process with SIGBUS. One
  // relaxed load: callers check it after each copy.
  [[nodiscard]] bool mapping_lost() const noexcept { return lost_->load(std::memory_order_relaxed) != 0; }
  // Asks the file system whether a host file still covers the whole mapping
  // (one fstat) and marks the mapping lost when it shrank: pages the kernel
  // cached from it, or pages no one touched since, would otherwise hide the
  // loss. True when the mapping is lost, for whatever reason. No system call
  // for devices.
  bool notice_shrink() const noexcept;
  // The error for a lost mapping (EIO or ENOSPC); logged once per backend.
  [[nodiscard]] Error loss_error() const;

  // Doorbells (a device whose DeviceInfo::doorbell is set; see driver.md).
  // A new descriptor (close-on-exec, non-blocking, the caller closes it) that
  // polls readable when this peer's MSI-X `vector` fired since it was last
  // read (read() takes an 8-byte counter).
  [[nodiscard]] Result<int> open_doorbell(uint16_t vector) const;
  // Rings MSI-X `vector` of the peer whose IVPosition is `peer`.
  [[nodiscard]] Result<void> ring(uint16_t peer, uint16_t vector) const;

 private:
  Backend();
  friend struct BackendFactory;

  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;
  bool writable_ = false;
  BackendKind kind_ = BackendKind::host_file;
  std::string path_;
  std::optional<DeviceInfo> device_;
  bool created_ = false;
  dev_t created_dev_ = 0;
  ino_t created_ino_ = 0;
  detail::MappingGuard* guard_ = nullptr;
  const std::atomic<uint32_t>* lost_;  // guard_'s mark, or one that is never set
  mutable std::atomic<bool> loss_logged_{false};
};

// The backend to use inside a guest when none is named: the first /dev/ivshmN,
// else the resource2 file of the first ivshmem PCI device (1af4:1110).
std::optional<std::string> find_default_backend();
// Every ivshmem backend of this system: each /dev/ivshmN (by N), else the
// resource2 file of each ivshmem PCI device; empty when there is none.
std::vector<std::string> find_all_backends();

}  // namespace ivshmfs
