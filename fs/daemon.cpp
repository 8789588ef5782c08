// SPDX-License-Identifier: MIT
#include "daemon.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ivshmfs::fs {

namespace {

[[noreturn]] void wait_for_child(int from_child, pid_t child) {
  char status = 1;
  ssize_t n = 0;
  do {
    n = ::read(from_child, &status, 1);
  } while (n < 0 && errno == EINTR);
  if (n == 1 && status == 0) _exit(0);
  // The child failed before mounting; it printed why. Report its status.
  int wstatus = 0;
  while (::waitpid(child, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0) _exit(WEXITSTATUS(wstatus));
  _exit(1);
}

}  // namespace

Detacher::Detacher(bool foreground) {
  if (foreground) return;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "ivshmfs: pipe: %s\n", std::strerror(errno));
    std::exit(1);
  }
  const pid_t child = ::fork();
  if (child < 0) {
    std::fprintf(stderr, "ivshmfs: fork: %s\n", std::strerror(errno));
    std::exit(1);
  }
  if (child > 0) {
    ::close(fds[1]);
    wait_for_child(fds[0], child);
  }
  ::close(fds[0]);
  notify_fd_ = fds[1];
}

Detacher::~Detacher() {
  if (notify_fd_ >= 0) ::close(notify_fd_);
}

void Detacher::succeed() noexcept {
  if (notify_fd_ < 0) return;
  ::setsid();
  if (::chdir("/") != 0) {
    // Not fatal: the mount point is absolute and nothing else uses the cwd.
  }
  const int null = ::open("/dev/null", O_RDWR);
  if (null >= 0) {
    ::dup2(null, STDIN_FILENO);
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO) ::close(null);
  }
  const char ok = 0;
  while (::write(notify_fd_, &ok, 1) < 0 && errno == EINTR) {
  }
  ::close(notify_fd_);
  notify_fd_ = -1;
}

}  // namespace ivshmfs::fs
