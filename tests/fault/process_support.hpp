// SPDX-License-Identifier: MIT
// Child processes for the fault-injection tests: run a function in a forked
// child with its output in a log file, signal it, reap it, and a seeded
// random source whose seed every failure message names.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>

namespace ivshmfs::faulttest {

// The seed of a randomised run: IVSHMFS_FAULT_SEED to repeat one, else new.
inline uint64_t run_seed() {
  if (const char* s = std::getenv("IVSHMFS_FAULT_SEED"); s != nullptr && *s != '\0') {
    return std::strtoull(s, nullptr, 0);
  }
  return std::random_device{}() ^ (static_cast<uint64_t>(::getpid()) << 32);
}

// How long a randomised run lasts: IVSHMFS_FAULT_SECONDS, else `fallback`.
inline std::chrono::milliseconds run_length(std::chrono::milliseconds fallback) {
  if (const char* s = std::getenv("IVSHMFS_FAULT_SECONDS"); s != nullptr && *s != '\0') {
    return std::chrono::milliseconds(static_cast<int64_t>(std::strtod(s, nullptr) * 1000));
  }
  return fallback;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// One forked child running a function; its stdout and stderr go to `log`.
class Child {
 public:
  Child() = default;
  Child(const std::string& log, const std::function<int()>& body) : log_(log) {
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
      int code = 1;
      try {
        code = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child: exception: %s\n", e.what());
      }
      std::fflush(nullptr);
      ::_exit(code);
    }
  }
  Child(Child&& other) noexcept
      : pid_(std::exchange(other.pid_, -1)), status_(other.status_), log_(std::move(other.log_)) {}
  Child& operator=(Child&& other) noexcept {
    if (this != &other) {
      kill_and_reap();
      pid_ = std::exchange(other.pid_, -1);
      status_ = other.status_;
      log_ = std::move(other.log_);
    }
    return *this;
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { kill_and_reap(); }

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool started() const { return pid_ > 0; }
  void signal(int sig) const {
    if (pid_ > 0 && !status_) ::kill(pid_, sig);
  }
  // The exit status once the child ended: the exit code, or 128 + signal.
  std::optional<int> poll() {
    if (pid_ <= 0 || status_) return status_;
    int raw = 0;
    if (::waitpid(pid_, &raw, WNOHANG) == pid_) status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    return status_;
  }
  // Waits up to `deadline` for the child to end.
  std::optional<int> wait(std::chrono::milliseconds deadline) {
    const auto until = std::chrono::steady_clock::now() + deadline;
    while (!poll() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return status_;
  }
  void kill_and_reap() {
    if (pid_ <= 0 || status_) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    int raw = 0;
    while (::waitpid(pid_, &raw, 0) < 0 && errno == EINTR) {
    }
    status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  }
  [[nodiscard]] std::string log() const { return log_.empty() ? std::string() : slurp(log_); }
  // The last `max` bytes of the log, for failure messages.
  [[nodiscard]] std::string log_tail(std::size_t max = 1500) const {
    std::string s = log();
    return s.size() > max ? "..." + s.substr(s.size() - max) : s;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::string log_;
};

// A scratch directory under /tmp (logs, acknowledgement files), removed with
// everything in it.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    std::string templ = "/tmp/ivshmfs-fault-" + tag + "-XXXXXX";
    if (::mkdtemp(templ.data()) != nullptr) path_ = templ;
  }
  ~ScratchDir() {
    if (!path_.empty()) std::system(("rm -rf '" + path_ + "'").c_str());  // NOLINT(cert-env33-c)
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace ivshmfs::faulttest
