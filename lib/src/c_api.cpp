// SPDX-License-Identifier: MIT
// The C API: a thin shell over Region and PartitionWriter. No exception and
// no C++ type crosses it; errors become a negative errno plus a message.
#include "ivshmfs/ivshmfs.h"

#include <cerrno>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "ivshmfs/backend.hpp"
#include "ivshmfs/identity.hpp"
#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

struct ivshmfs_region {
  std::shared_ptr<ivshmfs::Region> region;
  std::unique_ptr<ivshmfs::PartitionWriter> writer;
  // The C API promises thread-safe handles; a writer belongs to one thread at
  // a time, so appends and resets on one handle take turns here.
  std::mutex write_mutex;
  int32_t own_id = -1;
};

namespace {

thread_local std::string last_error;

// The library logs through spdlog's default logger, which writes to stdout
// until a program sets its own: a C program's stdout is its data, so send
// the library's few warnings to stderr unless the program chose a logger.
void log_to_stderr_unless_configured() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (!spdlog::default_logger()->name().empty()) return;
    auto logger = spdlog::stderr_logger_mt("ivshmfs-c");
    logger->set_pattern("ivshmfs: %v");
    logger->set_level(spdlog::level::warn);
    spdlog::set_default_logger(std::move(logger));
  });
}

int fail(const ivshmfs::Error& error) {
  last_error = error.message;
  return error.negative_errno();
}

int fail(int err, std::string message) {
  last_error = std::move(message);
  return -err;
}

// Runs `body`, turning any exception into -EIO (or -ENOMEM) at the boundary.
template <class F>
auto guarded(F&& body) noexcept -> decltype(body()) {
  try {
    last_error.clear();
    return body();
  } catch (const std::bad_alloc&) {
    return fail(ENOMEM, "out of memory");
  } catch (const std::exception& e) {
    return fail(EIO, e.what());
  }
}

}  // namespace

extern "C" {

int ivshmfs_open(const struct ivshmfs_open_options* options, ivshmfs_region** out) {
  return guarded([&]() -> int {
    log_to_stderr_unless_configured();
    if (options == nullptr || out == nullptr) return fail(EINVAL, "ivshmfs_open: options and out must not be NULL");
    *out = nullptr;
    std::string path;
    if (options->backend != nullptr) {
      path = options->backend;
    } else if (auto found = ivshmfs::find_default_backend()) {
      path = *found;
    } else {
      return fail(ENOENT, "no backend given and no ivshmem device found");
    }
    const bool write = (options->flags & IVSHMFS_OPEN_WRITE) != 0;
    ivshmfs::RegionOpenOptions open_options;
    open_options.writable = write;
    open_options.create = (options->flags & IVSHMFS_OPEN_CREATE) != 0;
    open_options.create_size = options->create_size;
    open_options.create_partitions = options->create_partitions == 0 ? 4 : options->create_partitions;
    if (options->id >= 0) open_options.own_id = static_cast<uint32_t>(options->id);
    auto region = ivshmfs::Region::open_path(path, open_options);
    if (!region) return fail(region.error());

    auto handle = std::make_unique<ivshmfs_region>();
    handle->region = std::move(region).value();
    if (options->id >= 0) handle->own_id = options->id;
    if (write) {
      std::optional<uint32_t> explicit_id;
      if (options->id >= 0) explicit_id = static_cast<uint32_t>(options->id);
      auto who = ivshmfs::resolve_peer_id(explicit_id, handle->region->backends().front());
      if (!who) return fail(who.error());
      ivshmfs::ClaimOptions claim;
      claim.force = (options->flags & IVSHMFS_OPEN_FORCE) != 0;
      auto writer = ivshmfs::PartitionWriter::claim(handle->region, who->id, claim);
      if (!writer) return fail(writer.error());
      handle->writer = std::move(writer).value();
      handle->own_id = static_cast<int32_t>(who->id);
    }
    *out = handle.release();
    return 0;
  });
}

ssize_t ivshmfs_append(ivshmfs_region* handle, const void* data, size_t size) {
  return guarded([&]() -> ssize_t {
    if (handle == nullptr || (data == nullptr && size > 0)) return fail(EINVAL, "ivshmfs_append: NULL argument");
    if (!handle->writer) return fail(EBADF, "ivshmfs_append: the region was opened without IVSHMFS_OPEN_WRITE");
    std::lock_guard lock(handle->write_mutex);
    auto n = handle->writer->append({static_cast<const std::byte*>(data), size});
    if (!n) return fail(n.error());
    return static_cast<ssize_t>(*n);
  });
}

ssize_t ivshmfs_read(ivshmfs_region* handle, uint32_t id, uint64_t offset, void* buffer, size_t size) {
  return guarded([&]() -> ssize_t {
    if (handle == nullptr || (buffer == nullptr && size > 0)) return fail(EINVAL, "ivshmfs_read: NULL argument");
    auto n = handle->region->read(id, offset, {static_cast<std::byte*>(buffer), size});
    if (!n) return fail(n.error());
    return static_cast<ssize_t>(*n);
  });
}

int ivshmfs_reset(ivshmfs_region* handle) {
  return guarded([&]() -> int {
    if (handle == nullptr) return fail(EINVAL, "ivshmfs_reset: NULL handle");
    if (!handle->writer) return fail(EBADF, "ivshmfs_reset: the region was opened without IVSHMFS_OPEN_WRITE");
    std::lock_guard lock(handle->write_mutex);
    if (auto r = handle->writer->reset(); !r) return fail(r.error());
    return 0;
  });
}

int ivshmfs_stat(ivshmfs_region* handle, uint32_t id, struct ivshmfs_partition_stat* out) {
  return guarded([&]() -> int {
    if (handle == nullptr || out == nullptr) return fail(EINVAL, "ivshmfs_stat: NULL argument");
    auto s = handle->region->stat(id);
    if (!s) return fail(s.error());
    *out = ivshmfs_partition_stat{
        s->id,        s->claimed ? 1u : 0u, s->alive ? 1u : 0u,    s->ring ? IVSHMFS_STAT_RING : 0u,
        s->length,    s->capacity,          s->generation,         s->last_write_ns,
        s->owner_pid, s->owner_since_ns,    s->owner_heartbeat_ns, s->retained_from};
    return 0;
  });
}

uint32_t ivshmfs_partition_count(const ivshmfs_region* handle) {
  return handle == nullptr ? 0 : handle->region->info().partition_count;
}

int32_t ivshmfs_own_id(const ivshmfs_region* handle) { return handle == nullptr ? -1 : handle->own_id; }

void ivshmfs_close(ivshmfs_region* handle) { delete handle; }

const char* ivshmfs_last_error(void) { return last_error.c_str(); }

}  // extern "C"
