// SPDX-License-Identifier: MIT
// What the files of fs/ that implement Filesystem share: inode numbers, the
// per-open handle and per-partition slot, and the errno boundary helpers.
// Only those .cpp files include it.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <span>
#include <string>
#include <system_error>
#include <unordered_set>
#include <vector>

#include <spdlog/spdlog.h>

#include "filesystem.hpp"
#include "status.hpp"

namespace ivshmfs::fs {

namespace detail {

constexpr fuse_ino_t kStatusIno = 2;
constexpr fuse_ino_t kFollowDirIno = 3;
constexpr fuse_ino_t kPartitionIno0 = 16;
constexpr fuse_ino_t kFollowIno0 = kPartitionIno0 + IVSHMFS_MAX_PARTITIONS;
// A partition file's node id has an epoch (see inodes.cpp): epoch E of
// partition I is kPartitionIno0 + E * kEpochStride + I; follow files are of
// epoch 0 only.
constexpr fuse_ino_t kEpochStride = fuse_ino_t{2} * IVSHMFS_MAX_PARTITIONS;

constexpr const char* kStatusName = ".status";
constexpr const char* kFollowName = "follow";

// The largest request the kernel sends us (FUSE_MAX_MAX_PAGES pages); libfuse
// turns conn->max_write into the kernel's max_pages, which bounds reads too.
constexpr unsigned kMaxRequest = 1U << 20;
// What stat reports as the preferred I/O size, so cat and cp use big requests.
constexpr blksize_t kPreferredIo = 1 << 20;

// The kernel's page size: the unit of its page cache.
inline uint64_t page_size() noexcept {
  static const auto size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

inline timespec to_timespec(uint64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000ULL), static_cast<long>(ns % 1'000'000'000ULL)};
}

inline int errno_of(const Error& e) noexcept { return -e.negative_errno(); }

// A per-thread buffer for reads that must be copied out of the mapping first.
inline std::span<std::byte> scratch(std::size_t size) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < size) buffer.resize(std::max<std::size_t>(size, std::size_t{64} * 1024));
  return {buffer.data(), size};
}

// Exceptions become an errno here, at the libfuse boundary.
inline void reply_exception(fuse_req_t req) noexcept {
  int error = EIO;
  try {
    throw;
  } catch (const std::bad_alloc&) {
    error = ENOMEM;
  } catch (const std::system_error& e) {
    error = e.code().value() != 0 ? e.code().value() : EIO;
    spdlog::error("{}", e.what());
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
  } catch (...) {
    spdlog::error("unknown exception in a FUSE operation");
  }
  fuse_reply_err(req, error);
}

inline Filesystem& self(fuse_req_t req) noexcept { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }

}  // namespace detail

// One open file.
struct Filesystem::Handle {
  NodeKind kind = NodeKind::none;
  uint32_t index = 0;
  const PartitionInfo* row = nullptr;  // partition files: what the slot held at open (see gone())
  bool writable = false;
  bool append = false;  // opened with O_APPEND
  bool cached = false;  // a partition file read through the kernel's page cache
  std::string text;     // .status: the snapshot taken at open
  std::mutex mutex;     // guards position and generation
  // Partition files: the end of the last read (poll reports POLLIN past it).
  // Follow files: the cursor, independent of the kernel's file offset.
  uint64_t position = 0;
  uint64_t generation = 0;
  bool eof_once = false;  // follow files: a wait was interrupted (see follow.cpp)
  // Rings (data_path.cpp, follow.cpp): whether a read was answered yet, and
  // for partition files how far past the kernel's file offset this
  // descriptor reads since its writer lapped it (stream = offset + shift).
  bool read_once = false;
  uint64_t shift = 0;
  fuse_pollhandle* poll = nullptr;  // guarded by the slot's poll_mutex
};

// The notifier thread's controls (data_path.cpp), shared with the thread so
// that it can outlive a stop() that did not wait for it.
struct Filesystem::Notifier {
  std::mutex mutex;
  std::condition_variable wake;
  bool due = false;       // guarded by mutex
  bool stopping = false;  // guarded by mutex
  std::atomic<bool> done{false};
};

// One slot of the region's partition table: the partition it holds now, if
// any. In a live table (docs/layout.md) the watcher moves `row` when the
// table changes; every other member lives on across the change.
struct Filesystem::Slot {
  explicit Slot(uint32_t index) { absent.id = UINT32_MAX, absent.index = index; }
  // The partition now in this slot: a row of one of the region's table
  // versions (they stay valid while the region lives), or `absent` (id
  // UINT32_MAX, which the region has no partition for: ENOENT).
  std::atomic<const PartitionInfo*> row{&absent};
  PartitionInfo absent;
  [[nodiscard]] const PartitionInfo& info() const noexcept { return *row.load(std::memory_order_acquire); }
  [[nodiscard]] bool present() const noexcept { return info().id != UINT32_MAX; }
  [[nodiscard]] std::string name() const {
    return present() ? partition_file_name(info().id) : std::string("(free slot)");
  }
  std::atomic<uint64_t> lookups{0};  // of all epochs' nodes
  // The node id lookups hand out now; the watcher moves it on at a reset.
  std::atomic<uint64_t> epoch{0};
  std::mutex nodes_mutex;
  std::map<uint64_t, uint64_t> node_lookups;  // epoch -> lookups the kernel holds; guarded by nodes_mutex
  std::atomic<uint64_t> follow_lookups{0};
  // A ring: bytes readers of this mount skipped silently (-o overrun=skip).
  std::atomic<uint64_t> skipped{0};
  // The watcher's last view; only the watcher thread touches these.
  uint64_t seen_length = 0;
  uint64_t seen_generation = 0;
  bool inval_pending = false;  // the follow file's attributes are due a refresh
  std::chrono::steady_clock::time_point last_inval{};
  std::mutex poll_mutex;
  std::unordered_set<Handle*> pollers;  // handles holding a poll handle

  // The page cache rule: every page the kernel may hold of this partition
  // file was read from generation `cache_generation`. A read of another
  // generation is never handed to the kernel; the watcher moves the value on
  // after it dropped every cached page (see data_path.cpp).
  std::mutex cache_mutex;
  std::condition_variable cache_moved;
  uint64_t cache_generation = 0;  // guarded by cache_mutex
  // No page of cache_generation goes to the kernel before this: a read()
  // it was assembling from the old pages when they were dropped ends first.
  std::chrono::steady_clock::time_point cache_ready_at{};  // guarded by cache_mutex
  // The end of what reads of that generation handed to the kernel: pages
  // below it may be read from the cache without asking us (poll uses it).
  std::atomic<uint64_t> fetched_end{0};
  // The generation the watcher saw last and handed to the notifier; the
  // notifier moves cache_generation to it after dropping every page.
  uint64_t requested_generation = 0;  // the watcher's
  uint64_t pending_generation = 0;    // guarded by cache_mutex
  bool generation_due = false;        // guarded by cache_mutex
  // The last page (see data_path.cpp, settle_tail()): a cached read answered
  // short leaves the kernel a page whose bytes past the end are zeros. No
  // reply may show the kernel a larger size while that page is cached, nor
  // for kTailGrace after it was dropped (a read() that found the page before
  // the drop may still copy from it). Under tail_mutex: the file's length
  // when each cached read in flight began (its reply, if short, ends at or
  // past it), the lowest end of a short reply the notifier has not taken
  // yet, the lowest one it is dropping now, and the lowest one dropped
  // within the grace. tail_settled: one of them moved.
  static constexpr std::chrono::milliseconds kTailGrace{50};
  std::mutex tail_mutex;
  std::multiset<uint64_t> inflight_from;                 // guarded by tail_mutex
  uint64_t short_low = UINT64_MAX;                       // guarded by tail_mutex
  uint64_t dropping_low = UINT64_MAX;                    // guarded by tail_mutex
  uint64_t settle_low = UINT64_MAX;                      // guarded by tail_mutex
  std::chrono::steady_clock::time_point settle_until{};  // guarded by tail_mutex
  uint64_t last_shown = UINT64_MAX;  // the size the last attribute reply showed; guarded by tail_mutex
  std::condition_variable tail_settled;
  // Below this size no short page is cached, or was within the grace, and
  // none can be: what a reply may show. Guarded by tail_mutex.
  [[nodiscard]] uint64_t tail_safe(std::chrono::steady_clock::time_point now) const noexcept {
    uint64_t safe = std::min(short_low, dropping_low);
    if (now < settle_until) safe = std::min(safe, settle_low);
    if (!inflight_from.empty()) safe = std::min(safe, *inflight_from.begin());
    return safe;
  }
  void dropped(uint64_t from, std::chrono::steady_clock::time_point now) noexcept {
    dropping_low = UINT64_MAX;
    settle_low = now < settle_until ? std::min(settle_low, from) : from;
    settle_until = now + kTailGrace;
  }
  void note_fetched(uint64_t end) noexcept {
    uint64_t seen = fetched_end.load(std::memory_order_relaxed);
    while (end > seen && !fetched_end.compare_exchange_weak(seen, end, std::memory_order_relaxed)) {
    }
  }
};

}  // namespace ivshmfs::fs
