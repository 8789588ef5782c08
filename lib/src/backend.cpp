// SPDX-License-Identifier: MIT
#include "ivshmfs/backend.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <vector>

#include <spdlog/spdlog.h>

#include "ivshm.h"
#include "ivshmfs/identity.hpp"
#include "mapping_guard.hpp"

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

namespace {

// What a file of `size` bytes will cost its filesystem: refused when the
// filesystem has less room, with a warning when it is RAM (tmpfs) and would
// take more than half of what the system has available.
Result<void> check_room(int fd, const std::string& path, uint64_t size) {
  struct statvfs vfs {};
  if (::fstatvfs(fd, &vfs) == 0 && vfs.f_frsize > 0) {
    const uint64_t room = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (size > room) {
      return make_error(Errc::no_space, path + ": cannot create a region of " + format_size(size) +
                                            ": its filesystem has " + format_size(room) + " free (of " +
                                            format_size(static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize) + ")");
    }
  }
  struct statfs fs {};
  if (::fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) {
    unsigned long long available_kib = 0;
    std::ifstream meminfo("/proc/meminfo");
    for (std::string line; std::getline(meminfo, line);) {
      if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &available_kib) == 1) break;
    }
    const uint64_t available = available_kib * 1024;
    if (available > 0 && size > available / 2) {
      spdlog::warn(
          "{}: a region of {} lives in RAM (tmpfs) and takes more than half of the {} this system has available", path,
          format_size(size), format_size(available));
    }
  }
  return {};
}

// Allocates every page of a new file now, in steps so that a large one can
// report progress: a sparse file in a full tmpfs would turn a later store
// into the mapping into SIGBUS; this way it fails here.
Result<void> allocate(int fd, const std::string& path, uint64_t size, const BackendOptions& options) {
  constexpr uint64_t kStep = uint64_t{256} << 20;
  for (uint64_t done = 0; done < size;) {
    const uint64_t n = std::min(kStep, size - done);
    if (int err = ::posix_fallocate(fd, static_cast<off_t>(done), static_cast<off_t>(n)); err != 0) {
      errno = err;
      return make_sys_error(path + ": cannot allocate " + format_size(size));
    }
    done += n;
    if (options.progress) options.progress(done, size);
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<Backend>> BackendFactory::open(std::string_view path_view, const BackendOptions& options) {
  std::string path(path_view);
  if (path.empty()) return make_error(Errc::invalid_argument, "no backend given");

  // O_NONBLOCK: opening a FIFO (or a device that waits) must not block; the
  // type check below refuses whatever is not a region.
  const int access = options.writable ? O_RDWR : O_RDONLY;
  const int flags = access | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  bool created = false;
  FdGuard fd{::open(path.c_str(), flags)};
  if (fd.fd < 0 && errno == ENOENT && options.create) {
    fd.fd = ::open(path.c_str(), flags | O_CREAT | O_EXCL, 0660);
    created = fd.fd >= 0;
    if (fd.fd < 0 && errno == EEXIST) fd.fd = ::open(path.c_str(), flags);  // someone else was quicker
  }
  if (fd.fd < 0) {
    if (errno == ENOENT && !options.create) {
      return make_error(Errc::io_error, path + ": no such file (create it with 'ivshmctl format --size SIZE " + path +
                                            "' or the create option)");
    }
    return make_sys_error(path);
  }
  auto backend = std::unique_ptr<Backend>(new Backend());
  backend->path_ = path;
  backend->writable_ = options.writable;
  if (created) {
    struct stat st {};
    if (::fstat(fd.fd, &st) == 0) {
      backend->created_ = true;
      backend->created_dev_ = st.st_dev;
      backend->created_ino_ = st.st_ino;
    }
  }
  // From here on a failure removes the file we created: Backend's destructor
  // closes the descriptor, remove_if_created() the file.
  auto failed = [&](Error e) -> Result<std::unique_ptr<Backend>> {
    backend->remove_if_created();
    return e;
  };
  if (fd.fd <= STDERR_FILENO) {
    return failed(make_error(Errc::invalid_argument,
                             path + ": opened as descriptor " + std::to_string(fd.fd) +
                                 ", a standard descriptor (0-2 were closed): refusing to map it, since output or "
                                 "input meant for that descriptor would land in the shared region; keep 0, 1 and 2 "
                                 "open (e.g. on /dev/null)"));
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) return failed(make_sys_error(path + ": fstat"));
  uint64_t size = 0;

  if (S_ISCHR(st.st_mode)) {
    ivshm_info info{};
    if (::ioctl(fd.fd, IVSHM_IOC_INFO, &info) != 0) {
      return failed(make_sys_error(path + ": not an ivshm device (IVSHM_IOC_INFO failed)"));
    }
    backend->kind_ = BackendKind::device;
    // Drivers before info_version 1 do not report IVSHM_INFO_F_PAGES; they
    // gave struct pages to every BAR2 of 2 MiB or more (PCI BARs are powers
    // of two, aligned to their size).
    const bool struct_pages =
        info.info_version >= 1 ? (info.flags & IVSHM_INFO_F_PAGES) != 0 : info.bar2_size >= (uint64_t{2} << 20);
    backend->device_ = DeviceInfo{info.bar2_size,
                                  info.ivposition,
                                  info.revision,
                                  (info.flags & IVSHM_INFO_F_MSIX) != 0,
                                  info.vectors,
                                  struct_pages,
                                  (info.flags & IVSHM_INFO_F_DOORBELL) != 0};
    size = info.bar2_size;
  } else if (S_ISREG(st.st_mode)) {
    backend->kind_ = is_pci_resource(path) ? BackendKind::pci_resource : BackendKind::host_file;
    size = static_cast<uint64_t>(st.st_size);
    if (size == 0 && options.create && options.create_size > 0 && backend->kind_ == BackendKind::host_file) {
      if (auto r = check_room(fd.fd, path, options.create_size); !r) return failed(std::move(r).error());
      if (auto r = allocate(fd.fd, path, options.create_size, options); !r) {
        if (::ftruncate(fd.fd, 0) != 0) {
          // Nothing more to undo: the file is removed below if we created it.
        }
        return failed(std::move(r).error());
      }
      size = options.create_size;
    }
  } else {
    const char* what = S_ISFIFO(st.st_mode)   ? "a FIFO"
                       : S_ISDIR(st.st_mode)  ? "a directory"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                                              : "not a regular file";
    return failed(make_error(Errc::invalid_argument,
                             path + ": is " + std::string(what) + ", not a region (a host file or an ivshm device)"));
  }
  if (size == 0) {
    return failed(make_error(Errc::region_too_small, path + ": empty (give a size to create the region)"));
  }
  if (size > SIZE_MAX) return failed(make_error(Errc::invalid_argument, path + ": too large to map"));

  const int prot = PROT_READ | (options.writable ? PROT_WRITE : 0);
  void* base = ::mmap(nullptr, size, prot, MAP_SHARED, fd.fd, 0);
  if (base == MAP_FAILED) {
    Error e = make_sys_error(path + ": mmap of " + format_size(size));
    if (e.sys_errno == EINVAL && backend->kind_ == BackendKind::pci_resource) {
      // With CONFIG_IO_STRICT_DEVMEM the kernel refuses to map a BAR that a driver has claimed.
      e.message += " (is the ivshm driver bound to this device? use its /dev/ivshmN instead)";
    }
    return failed(std::move(e));
  }
  backend->base_ = static_cast<std::byte*>(base);
  backend->size_ = size;
  backend->fd_ = fd.release();
  backend->guard_ = detail::MappingGuard::watch(base, size, backend->fd_, prot);
  if (backend->guard_ != nullptr) backend->lost_ = &backend->guard_->loss();
  return backend;
}

Result<std::unique_ptr<Backend>> Backend::open(std::string_view path, const BackendOptions& options) {
  return BackendFactory::open(path, options);
}

Backend::Backend() : lost_(&detail::MappingGuard::never_lost()) {}

Backend::~Backend() {
  if (guard_ != nullptr) guard_->release();
  if (base_ != nullptr) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

void Backend::remove_if_created() noexcept {
  if (!created_) return;
  created_ = false;
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && st.st_dev == created_dev_ && st.st_ino == created_ino_) {
    ::unlink(path_.c_str());
  }
}

Result<void> Backend::ensure_backed(uint64_t offset, uint64_t length) const {
  if (length == 0 || offset >= size_) return {};
  length = std::min<uint64_t>(length, size_ - offset);
  if (kind_ == BackendKind::host_file && writable_) {
    // Allocates the holes of a sparse file (QEMU and truncate make those);
    // pages that have backing already cost nothing.
    if (int err = ::posix_fallocate(fd_, static_cast<off_t>(offset), static_cast<off_t>(length)); err != 0) {
      if (err != EOPNOTSUPP && err != EINVAL) {
        errno = err;
        return make_sys_error(path_ + ": cannot back " + format_size(length) + " at offset " + std::to_string(offset) +
                              " of the region");
      }
    }
  }
  if (writable_) {
    // Faults the pages in now rather than one per append later; a page that
    // would raise SIGBUS on access fails here with EFAULT. Older kernels and
    // some device mappings do not support it (EINVAL): best effort then, and
    // on devices (no filesystem to run out of space) always.
    if (::madvise(base_ + offset, length, MADV_POPULATE_WRITE) != 0 && errno == EFAULT &&
        kind_ == BackendKind::host_file) {
      return make_error(Errc::no_space, path_ + ": " + format_size(length) + " at offset " + std::to_string(offset) +
                                            " of the region cannot be backed (is its filesystem full?)");
    }
  }
  return {};
}

Result<int> Backend::open_doorbell(uint16_t vector) const {
  if (!device_ || !device_->doorbell) return make_error(Errc::invalid_argument, path_ + ": no doorbell interrupts");
  const int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return make_sys_error(path_ + ": open");
  const int32_t v = vector;
  if (::ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &v) != 0) {
    auto e = make_sys_error(path_ + ": IVSHM_IOC_WAIT_VECTOR " + std::to_string(vector));
    ::close(fd);
    return e;
  }
  return fd;
}

Result<void> Backend::ring(uint16_t peer, uint16_t vector) const {
  if (!device_ || !device_->doorbell) return make_error(Errc::invalid_argument, path_ + ": no doorbell");
  ivshm_ring r{peer, vector, 0};
  if (::ioctl(fd_, IVSHM_IOC_RING, &r) != 0) {
    return make_sys_error(path_ + ": IVSHM_IOC_RING peer " + std::to_string(peer) + " vector " +
                          std::to_string(vector));
  }
  return {};
}

bool Backend::notice_shrink() const noexcept {
  if (mapping_lost()) return true;
  if (kind_ != BackendKind::host_file || guard_ == nullptr) return false;
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || st.st_size < 0 || static_cast<uint64_t>(st.st_size) >= size_) return false;
  guard_->mark_lost(detail::MappingLoss::shrank);
  return true;
}

Error Backend::loss_error() const {
  struct stat st {};
  const std::string now =
      ::fstat(fd_, &st) == 0 ? "it is " + std::to_string(st.st_size) + " bytes" : std::string("it cannot be examined");
  Error e{Errc::io_error, {}, EIO};
  switch (static_cast<detail::MappingLoss>(lost_->load(std::memory_order_relaxed))) {
    case detail::MappingLoss::no_space:
      e.sys_errno = ENOSPC;
      e.message = path_ + ": no space left to back the region's pages (a sparse file on a full filesystem; " + now +
                  "): the operation was not done";
      break;
    case detail::MappingLoss::gone:
      e.message = path_ + ": the device's memory went away under us (was the device unbound?): the operation failed";
      break;
    default:
      e.message = path_ + ": the backing file shrank under us (" + now + ", the region " + std::to_string(size_) +
                  "): its bytes are gone, the operation failed";
      break;
  }
  if (!loss_logged_.exchange(true)) spdlog::error("{}", e.message);
  return e;
}

Result<void> ensure_standard_descriptors() noexcept {
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    // The lowest free descriptor: this one, since the ones below are open.
    const int null = ::open("/dev/null", O_RDWR | O_NOCTTY);
    if (null < 0) return make_sys_error("/dev/null");
    if (null != fd) {
      ::close(null);
      return make_error(Errc::io_error, "cannot reopen descriptor " + std::to_string(fd) + " on /dev/null");
    }
  }
  return {};
}

std::vector<std::string> find_all_backends() {
  std::vector<std::pair<unsigned long, std::string>> devices;
  if (DIR* dir = ::opendir("/dev")) {
    const std::string_view prefix = IVSHM_DEVICE_PREFIX;
    while (dirent* entry = ::readdir(dir)) {
      const std::string_view name = entry->d_name;
      if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) continue;
      const std::string digits(name.substr(prefix.size()));
      if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
      devices.emplace_back(std::stoul(digits), "/dev/" + std::string(name));
    }
    ::closedir(dir);
  }
  std::sort(devices.begin(), devices.end());
  std::vector<std::string> found;
  found.reserve(devices.size());
  for (auto& [n, path] : devices) found.push_back(std::move(path));
  if (!found.empty()) return found;
  const std::string root = "/sys/bus/pci/devices";
  DIR* dir = ::opendir(root.c_str());
  if (dir == nullptr) return found;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::string base = root + "/" + entry->d_name;
    std::string vendor, device;
    std::ifstream(base + "/vendor") >> vendor;
    std::ifstream(base + "/device") >> device;
    if (vendor == "0x1af4" && device == "0x1110") found.push_back(base + "/resource2");
  }
  ::closedir(dir);
  std::sort(found.begin(), found.end());
  return found;
}

std::optional<std::string> find_default_backend() {
  std::vector<std::string> found = find_all_backends();
  if (found.empty()) return std::nullopt;
  return std::move(found.front());
}

}  // namespace ivshmfs
