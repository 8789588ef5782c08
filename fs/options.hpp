// SPDX-License-Identifier: MIT
// The daemon's command line: FUSE's own options plus ours (-o id=, create, ...).
#pragma once

#include <fuse_lowlevel.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include <spdlog/common.h>

namespace ivshmfs::fs {

// How the files look: ownership and permission bits.
struct FileOwnership {
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t umask = 022;
};

// Bounds of the adaptive interval at which the watcher polls the control
// blocks: `min` while data flows (for `hot` after the last change a peer
// made), then doubling up to `max` while nothing changes.
struct PollBounds {
  std::chrono::microseconds min{50};      // while data flows
  std::chrono::microseconds max{50'000};  // when idle
  std::chrono::microseconds hot{20'000};  // how long "data flows" lasts after a change
};

struct Options {
  std::optional<std::string> backend;  // omitted: find_default_backend()
  std::string mountpoint;              // absolute (FUSE resolves it)
  std::optional<uint32_t> id;          // -o id=N; omitted: resolve_peer_id
  // -o id=auto: claim the lowest free partition of the region, or add one
  // (of `join_size` bytes if given, else of the largest free extent) to a
  // region with a live partition table.
  bool id_auto = false;
  std::optional<uint64_t> join_size;   // -o id=auto,size=SIZE
  bool create = false;                 // -o create: create and format a missing host file
  uint64_t create_size = 64ULL << 20;  // -o size=SIZE
  uint32_t partitions = 4;             // -o partitions=N
  spdlog::level::level_enum log_level = spdlog::level::info;
  FileOwnership ownership;
  PollBounds poll;
  bool read_only = false;  // -o ro: claim nothing, every file 0444
  bool page_cache = true;  // read-only opens through the page cache; off with -o direct_io
  bool doorbell = true;    // -o nodoorbell clears it: poll even where doorbells work
  bool futex = true;       // -o nofutex clears it: poll host peers instead of futex wake-ups
  // -o server=SOCKET: join ivshm-server as a peer (its id is ours, its
  // eventfds ring guests and other clients and wake us).
  std::optional<std::string> server;
  // -o overrun=skip: a reader a ring's writer lapped goes on at the oldest
  // retained byte silently (counted in user.ivshmfs.skipped) instead of
  // failing one read with EPIPE first.
  bool overrun_skip = false;
  bool foreground = false;
  bool debug = false;
  bool singlethread = false;
  int clone_fd = 0;
  unsigned max_idle_threads = 0;  // 0: libfuse's default
  unsigned max_threads = 0;       // 0: libfuse's default
};

enum class ParseOutcome { run, exit_success, exit_failure };

// Parses argv (consumed from `args`, which then holds what fuse_session_new
// needs). Prints help, version or the reason of a failure itself.
ParseOutcome parse_options(fuse_args& args, Options& options);

}  // namespace ivshmfs::fs
