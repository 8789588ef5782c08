// SPDX-License-Identifier: MIT
// Detaching from the terminal without losing the exit status. libfuse 3.14's
// fuse_daemonize() forks after mounting, when the partition is already claimed
// and the heartbeat thread runs (threads do not survive fork), and its parent
// exits 0 whatever happens next. So we fork first, before any thread exists:
// the parent waits until the child has claimed and mounted (exit 0) or failed
// (the child's exit status), while the child's stderr is still the user's.
#pragma once

namespace ivshmfs::fs {

class Detacher {
 public:
  // In the background case forks; the parent never returns from here.
  explicit Detacher(bool foreground);
  Detacher(const Detacher&) = delete;
  Detacher& operator=(const Detacher&) = delete;
  ~Detacher();

  // Mounted: let the parent exit 0, leave the process group, drop the terminal.
  void succeed() noexcept;

 private:
  int notify_fd_ = -1;
};

}  // namespace ivshmfs::fs
