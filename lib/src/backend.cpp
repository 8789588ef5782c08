// SPDX-License-Identifier: MIT
#include "ivshmfs/backend.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <vector>

#include "ivshm.h"
#include "ivshmfs/identity.hpp"

namespace ivshmfs {

const char* to_string(BackendKind kind) noexcept {
  switch (kind) {
    case BackendKind::host_file: return "host file";
    case BackendKind::device: return "ivshm device";
    case BackendKind::pci_resource: return "PCI resource";
  }
  return "unknown";
}

struct BackendFactory {
  static Result<std::unique_ptr<Backend>> open(std::string_view path_view, const BackendOptions& options);
};

namespace {

bool is_pci_resource(const std::string& path) { return path.starts_with("/sys/") && path.ends_with("/resource2"); }

// Closes the descriptor unless ownership was handed over.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
  int release() { return std::exchange(fd, -1); }
};

}  // namespace

Result<std::unique_ptr<Backend>> BackendFactory::open(std::string_view path_view, const BackendOptions& options) {
  std::string path(path_view);
  if (path.empty()) return make_error(Errc::invalid_argument, "no backend given");

  const int access = options.writable ? O_RDWR : O_RDONLY;
  int flags = access | O_CLOEXEC;
  if (options.create) flags |= O_CREAT;
  FdGuard fd{::open(path.c_str(), flags, 0660)};
  if (fd.fd < 0) {
    if (errno == ENOENT && !options.create) {
      return make_error(Errc::io_error, path + ": no such file (create it with 'ivshmctl format --size SIZE " + path +
                                            "' or the create option)");
    }
    return make_sys_error(path);
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) return make_sys_error(path + ": fstat");

  auto backend = std::unique_ptr<Backend>(new Backend());
  backend->path_ = path;
  backend->writable_ = options.writable;
  uint64_t size = 0;

  if (S_ISCHR(st.st_mode)) {
    ivshm_info info{};
    if (::ioctl(fd.fd, IVSHM_IOC_INFO, &info) != 0) {
      return make_sys_error(path + ": not an ivshm device (IVSHM_IOC_INFO failed)");
    }
    backend->kind_ = BackendKind::device;
    // Drivers before info_version 1 do not report IVSHM_INFO_F_PAGES; they
    // gave struct pages to every BAR2 of 2 MiB or more (PCI BARs are powers
    // of two, aligned to their size).
    const bool struct_pages =
        info.info_version >= 1 ? (info.flags & IVSHM_INFO_F_PAGES) != 0 : info.bar2_size >= (uint64_t{2} << 20);
    backend->device_ = DeviceInfo{info.bar2_size, info.ivposition, info.revision, (info.flags & IVSHM_INFO_F_MSIX) != 0,
                                  info.vectors,   struct_pages};
    size = info.bar2_size;
  } else if (S_ISREG(st.st_mode)) {
    backend->kind_ = is_pci_resource(path) ? BackendKind::pci_resource : BackendKind::host_file;
    size = static_cast<uint64_t>(st.st_size);
    if (size == 0 && options.create && options.create_size > 0 && backend->kind_ == BackendKind::host_file) {
      // Allocate every page now: a sparse file in a full tmpfs would turn a
      // later store into the mapping into SIGBUS; this way it fails here.
      if (int err = ::posix_fallocate(fd.fd, 0, static_cast<off_t>(options.create_size)); err != 0) {
        errno = err;
        Error e = make_sys_error(path + ": cannot allocate " + format_size(options.create_size));
        ::ftruncate(fd.fd, 0);
        return e;
      }
      size = options.create_size;
    }
  } else {
    return make_error(Errc::invalid_argument, path + ": not a regular file or an ivshm device");
  }
  if (size == 0) {
    return make_error(Errc::region_too_small, path + ": empty (give a size to create the region)");
  }
  if (size > SIZE_MAX) return make_error(Errc::invalid_argument, path + ": too large to map");

  const int prot = PROT_READ | (options.writable ? PROT_WRITE : 0);
  void* base = ::mmap(nullptr, size, prot, MAP_SHARED, fd.fd, 0);
  if (base == MAP_FAILED) {
    Error e = make_sys_error(path + ": mmap of " + format_size(size));
    if (e.sys_errno == EINVAL && backend->kind_ == BackendKind::pci_resource) {
      // With CONFIG_IO_STRICT_DEVMEM the kernel refuses to map a BAR that a driver has claimed.
      e.message += " (is the ivshm driver bound to this device? use its /dev/ivshmN instead)";
    }
    return e;
  }
  backend->base_ = static_cast<std::byte*>(base);
  backend->size_ = size;
  backend->fd_ = fd.release();
  return backend;
}

Result<std::unique_ptr<Backend>> Backend::open(std::string_view path, const BackendOptions& options) {
  return BackendFactory::open(path, options);
}

Backend::~Backend() {
  if (base_ != nullptr) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> find_default_backend() {
  for (int n = 0; n < 16; ++n) {
    std::string dev = "/dev/" IVSHM_DEVICE_PREFIX + std::to_string(n);
    if (::access(dev.c_str(), F_OK) == 0) return dev;
  }
  const std::string root = "/sys/bus/pci/devices";
  DIR* dir = ::opendir(root.c_str());
  if (dir == nullptr) return std::nullopt;
  std::vector<std::string> found;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::string base = root + "/" + entry->d_name;
    std::string vendor, device;
    std::ifstream(base + "/vendor") >> vendor;
    std::ifstream(base + "/device") >> device;
    if (vendor == "0x1af4" && device == "0x1110") found.push_back(base + "/resource2");
  }
  ::closedir(dir);
  if (found.empty()) return std::nullopt;
  std::sort(found.begin(), found.end());
  return found.front();
}

}  // namespace ivshmfs
