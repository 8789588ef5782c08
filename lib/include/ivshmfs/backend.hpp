// SPDX-License-Identifier: MIT
// Backends: where the shared region's bytes come from. All of them end in one
// MAP_SHARED mapping; the region code above never knows which kind it has.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "ivshmfs/error.hpp"

namespace ivshmfs {

enum class BackendKind {
  host_file,     // a regular file, e.g. in /dev/shm, the one QEMU shares
  device,        // /dev/ivshmN of the ivshm driver (cacheable mapping of BAR2)
  pci_resource,  // /sys/bus/pci/devices/<bdf>/resource2 (no driver; uncached)
};
const char* to_string(BackendKind kind) noexcept;

struct BackendOptions {
  bool writable = true;      // map PROT_WRITE; false maps read-only
  bool create = false;       // host_file: create the file if it is missing
  uint64_t create_size = 0;  // host_file: size a missing or empty file to this
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
};

// A move-only owner of an open backend and its mapping.
class Backend {
 public:
  // Opens `path`, choosing the kind from what it is: a character device is
  // the driver's /dev/ivshmN, a file named resource2 under /sys is a PCI BAR,
  // anything else a host file.
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

 private:
  Backend() = default;
  friend struct BackendFactory;

  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;
  bool writable_ = false;
  BackendKind kind_ = BackendKind::host_file;
  std::string path_;
  std::optional<DeviceInfo> device_;
};

// The backend to use inside a guest when none is named: the first /dev/ivshmN,
// else the resource2 file of the first ivshmem PCI device (1af4:1110).
std::optional<std::string> find_default_backend();

}  // namespace ivshmfs
