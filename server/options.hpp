// SPDX-License-Identifier: MIT
// The command line of ivshm-server, parsed and checked before anything is opened.
#pragma once

#include <spdlog/common.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ivshmfs::server {

// QEMU's doorbell register has 16 bits for the peer id.
inline constexpr int kMaxPeerId = 65535;
inline constexpr int kMaxVectors = 64;

// One VM (or host program) whose id is fixed: every client of its socket gets that id.
struct PinnedPeer {
  std::string name;
  int id = 0;
  std::string socket_path;
};

struct Options {
  std::string shm_path;
  std::string socket_path = "/run/ivshm/server.sock";  // empty: no shared socket
  std::vector<PinnedPeer> pinned;
  int vectors = 1;
  int max_clients = 64;
  unsigned socket_mode = 0660;
  std::chrono::milliseconds send_timeout{5000};
  spdlog::level::level_enum log_level = spdlog::level::info;
};

// A usage error: the message says which argument is wrong and why (exit status 2).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Action { run, help, version };

struct ParsedCommandLine {
  Action action = Action::run;
  Options options;
};

// Parses argv. Throws UsageError on a malformed or out-of-range argument.
ParsedCommandLine parse_command_line(int argc, char** argv);

// Checks what the arguments name on this machine (the shared memory file).
// Throws UsageError with a message naming the file and the problem.
void check_shm_file(const std::string& path);

extern const char* const kUsage;

}  // namespace ivshmfs::server
