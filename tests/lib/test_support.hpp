// SPDX-License-Identifier: MIT
// Support code for the library's unit tests: scratch region files in
// /dev/shm, mappings with PROT_NONE guard pages around them, raw access to the
// bytes for forging corrupt regions, and running code in a forked child.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "ivshmfs/backend.hpp"
#include "ivshmfs/error.hpp"
#include "ivshmfs/layout.h"
#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace ivshmfs::test {

// spdlog builds its default logger on first use, behind a function-local
// static inside the (uninstrumented) shared libspdlog. When two test threads
// log first, ThreadSanitizer cannot see that guard's synchronisation and
// reports a race inside spdlog. Programs set logging up on their main thread
// before any other starts (as fs/main.cpp does); the tests do the same here,
// before main().
inline const bool logging_ready = (spdlog::default_logger_raw() != nullptr);

inline std::size_t page_size() { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }

// A file in /dev/shm with a name unique to this process and test, removed on
// destruction. Created with `size` zero bytes (or not at all when size < 0).
class TempFile {
 public:
  explicit TempFile(const std::string& tag, long long size = -1) {
    static std::atomic<int> counter{0};
    path_ = "/dev/shm/ivshmfs-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    ::unlink(path_.c_str());
    if (size >= 0) {
      const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      EXPECT_GE(fd, 0) << path_ << ": " << std::strerror(errno);
      if (fd >= 0) {
        EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0) << path_ << ": " << std::strerror(errno);
        ::close(fd);
      }
    }
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Creates (or reuses) the file at `path`, sizes it and formats it.
inline void format_file(const std::string& path, uint64_t size, uint32_t partitions) {
  auto backend = Backend::open(path, BackendOptions{true, true, size});
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  FormatOptions options;
  options.partitions = partitions;
  options.force = true;
  auto formatted = Region::format(**backend, options);
  ASSERT_TRUE(formatted.ok()) << formatted.error().message;
}

inline std::shared_ptr<Region> open_region(const std::string& path, bool writable) {
  RegionOpenOptions options;
  options.writable = writable;
  auto region = Region::open_path(path, options);
  EXPECT_TRUE(region.ok()) << (region.ok() ? "" : region.error().message);
  return region.ok() ? std::move(region).value() : nullptr;
}

// A MAP_SHARED read-write mapping of a whole file, for forging bytes behind
// the library's back.
class RawMap {
 public:
  explicit RawMap(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      ADD_FAILURE() << path << ": " << std::strerror(errno);
      return;
    }
    struct stat st {};
    ::fstat(fd, &st);
    size_ = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      ADD_FAILURE() << path << ": mmap: " << std::strerror(errno);
      size_ = 0;
      return;
    }
    base_ = static_cast<std::byte*>(p);
  }
  ~RawMap() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }
  RawMap(const RawMap&) = delete;
  RawMap& operator=(const RawMap&) = delete;

  [[nodiscard]] std::byte* data() const { return base_; }
  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] ivshmfs_header* header() const { return reinterpret_cast<ivshmfs_header*>(base_); }
  [[nodiscard]] ivshmfs_partition_entry* table() const {
    return reinterpret_cast<ivshmfs_partition_entry*>(base_ + sizeof(ivshmfs_header));
  }
  [[nodiscard]] ivshmfs_control* control(uint32_t index) const {
    return reinterpret_cast<ivshmfs_control*>(base_ + table()[index].control_offset);
  }

 private:
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
};

// Atomic store into a live control-block field, as a peer would.
inline void poke(uint64_t& field, uint64_t value) {
  std::atomic_ref<uint64_t>(field).store(value, std::memory_order_release);
}
inline uint64_t peek(uint64_t& field) { return std::atomic_ref<uint64_t>(field).load(std::memory_order_acquire); }

// PROT_NONE pages right before and right after a backend's mapping: any read
// past either end of the mapping faults instead of reading a neighbour.
class GuardPages {
 public:
  GuardPages() = default;
  GuardPages(const GuardPages&) = delete;
  GuardPages& operator=(const GuardPages&) = delete;
  ~GuardPages() { clear(); }
  void set(void* before, void* after) {
    clear();
    before_ = before;
    after_ = after;
  }
  void clear() {
    if (before_ != nullptr) ::munmap(before_, page_size());
    if (after_ != nullptr) ::munmap(after_, page_size());
    before_ = after_ = nullptr;
  }
  [[nodiscard]] bool armed() const { return before_ != nullptr && after_ != nullptr; }

 private:
  void* before_ = nullptr;
  void* after_ = nullptr;
};

// Opens `path` with Backend::open so that the mapping lies between two
// PROT_NONE guard pages (the file's size must be a page multiple). The
// kernel picks the address of the backend's mapping, so this reserves
// guard + hole + guard and retries until the mapping lands in the hole;
// mappings that landed elsewhere stay alive meanwhile, filling the gaps the
// kernel prefers.
inline Result<std::unique_ptr<Backend>> open_guarded(const std::string& path, const BackendOptions& options,
                                                     GuardPages& guards) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return make_sys_error(path);
  const std::size_t page = page_size();
  const std::size_t length = static_cast<std::size_t>(st.st_size);
  if (length == 0 || length % page != 0) {
    return make_error(Errc::invalid_argument, path + ": guarded mapping needs a page-multiple size");
  }
  std::vector<std::unique_ptr<Backend>> misplaced;
  for (int attempt = 0; attempt < 256; ++attempt) {
    void* reserved = ::mmap(nullptr, length + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved == MAP_FAILED) return make_sys_error("mmap guard reservation");
    auto* base = static_cast<std::byte*>(reserved);
    ::munmap(base + page, length);
    auto backend = Backend::open(path, options);
    if (backend.ok() && (*backend)->bytes().data() == base + page && (*backend)->size() == length) {
      guards.set(base, base + page + length);
      return backend;
    }
    ::munmap(base, page);
    ::munmap(base + page + length, page);
    if (!backend.ok()) return backend;
    misplaced.push_back(std::move(backend).value());
  }
  return make_error(Errc::io_error, path + ": could not place the mapping between guard pages");
}

struct ChildOutcome {
  int status = 0;
  std::string output;  // what the child reported on failure
  [[nodiscard]] bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};

inline std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// Reads everything from fd until EOF.
inline std::string drain(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

struct Child {
  pid_t pid = -1;
  int fd = -1;  // read end of the pipe carrying the child's failure message
};

// Forks a child that runs `body`. The body returns "" on success or a message
// saying what failed; the child exits 0 or 1 accordingly (a crash shows as a
// signal). GoogleTest assertions must not be used inside the body.
inline Child spawn_child(const std::function<std::string()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return {};
  }
  if (pid == 0) {
    ::close(fds[0]);
    std::string message;
    try {
      message = body();
    } catch (const std::exception& e) {
      message = std::string("exception: ") + e.what();
    }
    std::size_t done = 0;
    while (done < message.size()) {
      const ssize_t n = ::write(fds[1], message.data() + done, message.size() - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::_exit(message.empty() ? 0 : 1);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// Waits for a child (killing it once `timeout` has passed: a hang is a
// failure, not a reason to block the suite) and collects its message.
inline ChildOutcome wait_child(Child child, std::chrono::seconds timeout = std::chrono::seconds(300)) {
  if (child.pid < 0) return {-1, "fork or pipe failed"};
  ChildOutcome outcome;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool killed = false;
  for (;;) {
    const pid_t r = ::waitpid(child.pid, &outcome.status, WNOHANG);
    if (r == child.pid) break;
    if (r < 0 && errno != EINTR) {
      outcome.status = -1;
      break;
    }
    if (!killed && std::chrono::steady_clock::now() > deadline) {
      ::kill(child.pid, SIGKILL);
      killed = true;
    }
    ::usleep(2000);
  }
  outcome.output = drain(child.fd);
  ::close(child.fd);
  if (killed) outcome.output += " (killed after " + std::to_string(timeout.count()) + " s)";
  return outcome;
}

inline ChildOutcome run_in_child(const std::function<std::string()>& body) { return wait_child(spawn_child(body)); }

#define EXPECT_CHILD_OK(outcome)                                                                                    \
  do {                                                                                                              \
    const auto& child_outcome_ = (outcome);                                                                         \
    EXPECT_TRUE(child_outcome_.ok()) << "child " << ::ivshmfs::test::describe_status(child_outcome_.status) << ": " \
                                     << child_outcome_.output;                                                      \
  } while (0)

// FNV-1a over bytes, for checksums.
inline uint64_t fnv1a(const void* data, std::size_t size, uint64_t hash = 1469598103934665603ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 1099511628211ULL;
  return hash;
}

// Checksum of a whole file, read with pread (not through any mapping).
inline uint64_t file_checksum(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t hash = 1469598103934665603ULL;
  std::vector<char> buf(1 << 16);
  off_t offset = 0;
  for (;;) {
    const ssize_t n = ::pread(fd, buf.data(), buf.size(), offset);
    if (n <= 0) break;
    hash = fnv1a(buf.data(), static_cast<std::size_t>(n), hash);
    offset += n;
  }
  ::close(fd);
  return hash;
}

// The two ways to lay out a region; tests that hold for both are
// parameterised over them (TEST_P ... INSTANTIATE_TEST_SUITE_P(Modes, ...)).
enum class Mode { shared, split };
inline std::string mode_name(const ::testing::TestParamInfo<Mode>& info) {
  return info.param == Mode::shared ? "Shared" : "Split";
}
#define IVSHMFS_BOTH_MODES(suite) \
  INSTANTIATE_TEST_SUITE_P(Modes, suite, ::testing::Values(Mode::shared, Mode::split), mode_name)

// A formatted scratch region in /dev/shm, in either mode, with the same
// capacity per partition in both: a shared file of one metadata page plus
// `partitions` data areas, or pieces of `piece_size` (a power of two) each.
// Removed on destruction.
class TestRegion {
 public:
  TestRegion(const std::string& tag, Mode mode, uint32_t partitions, uint64_t piece_size)
      : mode_(mode), partitions_(partitions), prefix_(tag + "-" + (mode == Mode::split ? "split" : "shared")) {
    remove();
    if (mode == Mode::shared) {
      format_file(prefix_.path(), IVSHMFS_PAGE_SIZE + partitions * (piece_size - IVSHMFS_PAGE_SIZE), partitions);
    } else {
      auto r = Region::format_split(prefix_.path(), partitions, piece_size, false);
      EXPECT_TRUE(r.ok()) << r.error().message;
    }
  }
  ~TestRegion() { remove(); }
  TestRegion(const TestRegion&) = delete;
  TestRegion& operator=(const TestRegion&) = delete;

  // What Region::open_path and the programs take: the file, or the prefix.
  [[nodiscard]] const std::string& path() const { return prefix_.path(); }
  [[nodiscard]] Mode mode() const { return mode_; }
  // The file holding partition `id`, and the partition's index in its table.
  [[nodiscard]] std::string file_of(uint32_t id) const {
    return mode_ == Mode::split ? split_piece_path(path(), id) : path();
  }
  [[nodiscard]] uint32_t index_in_file(uint32_t id) const { return mode_ == Mode::split ? 0 : id; }
  [[nodiscard]] std::vector<std::string> files() const {
    if (mode_ == Mode::shared) return {path()};
    std::vector<std::string> out;
    for (uint32_t id = 0; id < partitions_; ++id) out.push_back(split_piece_path(path(), id));
    return out;
  }
  // Checksum over every file of the region.
  [[nodiscard]] uint64_t checksum() const {
    uint64_t hash = 0;
    for (const auto& f : files()) hash = hash * 31 + file_checksum(f);
    return hash;
  }

 private:
  void remove() {
    ::unlink(prefix_.path().c_str());
    for (uint32_t id = 0; id < IVSHMFS_MAX_PARTITIONS; ++id) ::unlink(split_piece_path(prefix_.path(), id).c_str());
  }
  Mode mode_;
  uint32_t partitions_;
  TempFile prefix_;  // a unique name, and the shared file itself
};

// Raw access to one partition's control block and data, behind the
// library's back, in whichever file holds it.
class RawPartition {
 public:
  RawPartition(const TestRegion& region, uint32_t id) : map_(region.file_of(id)), index_(region.index_in_file(id)) {}
  [[nodiscard]] ivshmfs_control* control() const { return map_.control(index_); }
  [[nodiscard]] std::byte* data() const { return map_.data() + map_.table()[index_].data_offset; }
  [[nodiscard]] RawMap& map() { return map_; }

 private:
  RawMap map_;
  uint32_t index_;
};

inline std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s)); }
inline std::string as_string(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Reads all committed bytes of a partition.
inline std::string read_all(const Region& region, uint32_t id) {
  auto s = region.stat(id);
  if (!s.ok()) {
    ADD_FAILURE() << s.error().message;
    return {};
  }
  std::vector<std::byte> buf(static_cast<std::size_t>(s->capacity));
  auto n = region.read(id, 0, buf);
  if (!n.ok()) {
    ADD_FAILURE() << n.error().message;
    return {};
  }
  return as_string(std::span(buf).first(*n));
}

}  // namespace ivshmfs::test
