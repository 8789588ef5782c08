// SPDX-License-Identifier: MIT
// Support for the mounted-filesystem tests: a formatted region file in
// /dev/shm, real ivshmfs daemons started from the built binary in temporary
// mount points, and cleanup that always unmounts (fusermount3 -u, then a
// lazy unmount and SIGKILL) even when an assertion failed halfway.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "ivshmfs/backend.hpp"
#include "ivshmfs/region.hpp"

namespace ivshmfs::fstest {

using namespace std::chrono_literals;

// Generous: machines are noisy. Only "eventually" conditions wait this long.
inline constexpr auto kDeadline = 30s;

inline std::string unique_name(const std::string& tag) {
  static std::atomic<int> counter{0};
  return "ivshmfs-fs-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Polls `done` until it holds or the deadline passes; returns whether it held.
inline bool eventually(const std::function<bool()>& done, std::chrono::milliseconds deadline = kDeadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// Why the mount tests cannot run here, or nullopt when they can.
inline std::optional<std::string> missing_prerequisite() {
  if (::geteuid() != 0) return "mount tests need root";
  if (::access("/dev/fuse", R_OK | W_OK) != 0) return "/dev/fuse is not usable";
  if (::access("/usr/bin/fusermount3", X_OK) != 0 && ::access("/bin/fusermount3", X_OK) != 0) {
    return "fusermount3 is not installed (Debian package fuse3)";
  }
  return std::nullopt;
}

inline bool is_mounted(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mountpoint;
    fields >> id >> parent >> devno >> root >> mountpoint;
    if (mountpoint != dir) continue;
    const auto dash = line.find(" - ");
    if (dash != std::string::npos && line.compare(dash + 3, 13, "fuse.ivshmfs ") == 0) return true;
  }
  return false;
}

// Everything a descriptor yields until end of file (or an error).
inline std::string read_all_fd(int fd) {
  std::string out;
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    EXPECT_GE(n, 0) << "read: " << std::strerror(errno);
    if (n <= 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  return out;
}

// A file's whole contents through ordinary read(2) calls.
inline std::string read_all(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
  if (fd < 0) return "<open failed: " + std::string(std::strerror(errno)) + ">";
  std::string out = read_all_fd(fd);
  ::close(fd);
  return out;
}

// One write(2) of `data` to `path` opened for appending; it must be whole.
inline void append(const std::string& path, const std::string& data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  EXPECT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size())) << std::strerror(errno);
  ::close(fd);
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Runs a program to completion; returns its exit status (or -1).
inline int run_program(const std::vector<std::string>& argv, const std::string& log_path = "/dev/null",
                       const std::vector<std::string>& extra_env = {}) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) {
      ::dup2(log, STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
    }
    for (const auto& e : extra_env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    _exit(127);
  }
  if (pid < 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline void unmount(const std::string& dir) {
  if (!is_mounted(dir)) return;
  run_program({"fusermount3", "-u", "-q", dir});
  if (is_mounted(dir)) ::umount2(dir.c_str(), MNT_DETACH);
}

// A mount whose daemon stopped answering hangs every process touching it
// (and anything that stats it, such as ps or a shell's completion). The way
// out is the kernel's: abort the FUSE connection through fusectl, so every
// waiting request fails with ENOTCONN and the threads stuck in it return.
// `device` is the mount's st_dev, taken before it could hang. Returns whether
// the abort was written.
inline bool abort_fuse_connection(dev_t device) {
  const std::string connections = "/sys/fs/fuse/connections";
  const std::string abort_path = connections + "/" + std::to_string(::minor(device)) + "/abort";
  if (::access(abort_path.c_str(), W_OK) != 0) ::mount("none", connections.c_str(), "fusectl", 0, nullptr);
  const int fd = ::open(abort_path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool written = ::write(fd, "1", 1) == 1;
  ::close(fd);
  return written;
}

// The fixture knob that runs every mount test on both layouts: with
// IVSHMFS_TEST_SPLIT=1 in the environment (ctest registers the suite twice,
// the second time as fs.split.*), RegionFile makes a split region.
inline bool split_mode() {
  const char* v = std::getenv("IVSHMFS_TEST_SPLIT");
  return v != nullptr && std::string_view(v) == "1";
}

// A region in /dev/shm, formatted by the library, removed at the end: one
// file, or (split_mode()) the pieces PATH.vm0, PATH.vm1, ... each of
// size/partitions rounded up to a power of two.
class RegionFile {
 public:
  explicit RegionFile(uint64_t size = 1 << 20, uint32_t partitions = 2) : path_("/dev/shm/" + unique_name("region")) {
    remove();
    format(size, partitions, false);
  }
  ~RegionFile() { remove(); }
  RegionFile(const RegionFile&) = delete;
  RegionFile& operator=(const RegionFile&) = delete;

  // What the daemon and ivshmctl take: the file, or the split region's prefix.
  [[nodiscard]] const std::string& path() const { return path_; }

  // The files holding the region: the one file, or every piece.
  [[nodiscard]] std::vector<std::string> files() const {
    if (!split_mode()) return {path_};
    std::vector<std::string> out;
    for (uint32_t id = 0; id < IVSHMFS_MAX_PARTITIONS; ++id) {
      std::string piece = split_piece_path(path_, id);
      if (::access(piece.c_str(), F_OK) == 0) out.push_back(std::move(piece));
    }
    return out;
  }

  // Formats anew (force), as another host tool would underneath a mount.
  void format(uint64_t size, uint32_t partitions, bool force) {
    if (split_mode()) {
      uint64_t piece = 2 * IVSHMFS_PAGE_SIZE;
      while (piece < size / partitions) piece *= 2;
      auto r = Region::format_split(path_, partitions, piece, force);
      ASSERT_TRUE(r) << r.error().message;
      return;
    }
    auto backend = Backend::open(path_, BackendOptions{true, true, size});
    ASSERT_TRUE(backend) << backend.error().message;
    auto r = Region::format(**backend, FormatOptions{partitions, force});
    ASSERT_TRUE(r) << r.error().message;
  }

  // A fresh read-only look at partition `id`, straight through the library.
  [[nodiscard]] PartitionStat stat(uint32_t id) const {
    auto region = Region::open_path(path_, RegionOpenOptions{});
    EXPECT_TRUE(region) << region.error().message;
    if (!region) return {};
    auto s = (*region)->stat(id);
    EXPECT_TRUE(s) << s.error().message;
    return s ? *s : PartitionStat{};
  }

 private:
  void remove() const {
    ::unlink(path_.c_str());
    for (uint32_t id = 0; id < IVSHMFS_MAX_PARTITIONS; ++id) ::unlink(split_piece_path(path_, id).c_str());
  }
  std::string path_;
};

// An empty directory under /tmp, removed at the end (after unmounting).
class TempDir {
 public:
  explicit TempDir(const std::string& tag) : path_("/tmp/" + unique_name(tag)) { ::mkdir(path_.c_str(), 0755); }
  ~TempDir() {
    unmount(path_);
    ::rmdir(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One ivshmfs daemon, foreground (-f) in a child process, its stderr in a log.
class Daemon {
 public:
  struct Config {
    Config(std::string backend_path, std::string mount, std::optional<uint32_t> peer,
           std::vector<std::string> more = {}, bool fg = true, std::optional<std::string> host = std::nullopt)
        : backend(std::move(backend_path)),
          mountpoint(std::move(mount)),
          id(peer),
          options(std::move(more)),
          foreground(fg),
          hostname(std::move(host)) {}
    std::string backend;
    std::string mountpoint;
    std::optional<uint32_t> id;
    std::vector<std::string> options;  // more -o options
    bool foreground = true;
    std::optional<std::string> hostname;  // run in a new UTS namespace with this name
  };

  explicit Daemon(Config config) : config_(std::move(config)), log_path_("/tmp/" + unique_name("log") + ".txt") {}
  ~Daemon() {
    stop();
    ::unlink(log_path_.c_str());
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Starts the daemon; returns once the mount appears (true) or the daemon
  // exited or the deadline passed (false; see log()).
  bool start() {
    std::vector<std::string> argv = {IVSHMFS_PATH};
    if (config_.foreground) argv.emplace_back("-f");
    std::string opts = "poll_max_ms=20";
    if (config_.id) opts += ",id=" + std::to_string(*config_.id);
    for (const auto& o : config_.options) opts += "," + o;
    argv.emplace_back("-o");
    argv.push_back(opts);
    if (!config_.backend.empty()) argv.push_back(config_.backend);
    argv.push_back(config_.mountpoint);

    pid_ = ::fork();
    if (pid_ == 0) {
      const int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (log >= 0) {
        ::dup2(log, STDOUT_FILENO);
        ::dup2(log, STDERR_FILENO);
      }
      if (config_.hostname) {
        if (::unshare(CLONE_NEWUTS) != 0 || ::sethostname(config_.hostname->c_str(), config_.hostname->size()) != 0) {
          _exit(126);
        }
      }
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      _exit(127);
    }
    if (pid_ < 0) return false;
    const bool up = eventually([&] { return is_mounted(config_.mountpoint) || reap(false); });
    return up && is_mounted(config_.mountpoint);
  }

  // Unmounts as a user would; kills the daemon if it does not exit.
  void stop() {
    unmount(config_.mountpoint);
    if (pid_ > 0 && !eventually([&] { return reap(false); })) {
      ::kill(pid_, SIGKILL);
      reap(true);
    }
  }

  // SIGKILL: no chance to release the claim or unmount.
  void kill9() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
    reap(true);
    unmount(config_.mountpoint);
  }

  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // Waits for the process to exit; its status, or nullopt at the deadline.
  std::optional<int> wait_exit() {
    if (!eventually([&] { return reap(false); })) return std::nullopt;
    return exit_status_;
  }

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] std::optional<int> exit_status() const { return exit_status_; }
  [[nodiscard]] std::string log() const { return read_text(log_path_); }
  [[nodiscard]] const std::string& mountpoint() const { return config_.mountpoint; }
  [[nodiscard]] std::string file(const std::string& name) const { return config_.mountpoint + "/" + name; }

 private:
  // True once the child has exited (and was reaped).
  bool reap(bool block) {
    if (pid_ <= 0) return true;
    if (exit_status_) return true;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    if (r == pid_) {
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return true;
    }
    return r < 0 && errno == ECHILD;
  }

  Config config_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

// Two daemons over one region file, as vm0 and vm1: the way two VMs see one
// region. Always unmounted, whatever the test did.
class TwoPeers : public ::testing::Test {
 protected:
  TwoPeers() = default;
  TwoPeers(uint64_t region_size, uint32_t partitions) : region_(region_size, partitions) {}

  void SetUp() override {
    if (auto missing = missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
    a_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_a_.path(), 0, extra_options_a()});
    b_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_b_.path(), 1, extra_options_b()});
    ASSERT_TRUE(a_->start()) << "vm0 daemon did not mount:\n" << a_->log();
    ASSERT_TRUE(b_->start()) << "vm1 daemon did not mount:\n" << b_->log();
  }
  void TearDown() override {
    b_.reset();
    a_.reset();
  }
  virtual std::vector<std::string> extra_options_a() { return {}; }
  virtual std::vector<std::string> extra_options_b() { return {}; }

  // Declared first: destroyed last, after the daemons unmounted.
  RegionFile region_;
  TempDir dir_a_{"mnt-a"};
  TempDir dir_b_{"mnt-b"};
  std::unique_ptr<Daemon> a_;  // owns vm0
  std::unique_ptr<Daemon> b_;  // owns vm1
};

}  // namespace ivshmfs::fstest
