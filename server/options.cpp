// SPDX-License-Identifier: MIT
#include "options.hpp"

#include <getopt.h>
#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <set>
#include <string_view>

namespace ivshmfs::server {

const char* const kUsage =
    "Usage: ivshm-server [OPTIONS] --shm FILE\n"
    "\n"
    "Serve ivshmem-doorbell devices (QEMU's -device ivshmem-doorbell,chardev=...)\n"
    "and host programs with QEMU's ivshmem server protocol: every client gets a\n"
    "peer id, the shared memory FILE and one eventfd per interrupt vector for\n"
    "itself and for every other peer; peers are told when others come and go.\n"
    "Runs in the foreground and logs to stderr; SIGTERM or SIGINT closes every\n"
    "connection, removes the sockets and exits 0.\n"
    "\n"
    "Options:\n"
    "  -m, --shm FILE           the shared memory: an existing regular file (e.g. in\n"
    "                           /dev/shm) whose size is a power of two, 4 KiB or more\n"
    "                           (QEMU maps it as a PCI BAR)\n"
    "  -S, --socket PATH        the shared socket: each client gets the lowest free\n"
    "                           id no --peer pins (default /run/ivshm/server.sock;\n"
    "                           'none' for pinned sockets only)\n"
    "  -p, --peer NAME=ID[:PATH]  pin id ID (0-65535) to the VM or program NAME:\n"
    "                           clients of the socket PATH get ID, and so does a\n"
    "                           QEMU started with -name NAME (or guest=NAME, as\n"
    "                           libvirt does) on the shared socket; also after a\n"
    "                           restart. A second connection takes the id over (QEMU\n"
    "                           restarted or migrated) and the first is dropped.\n"
    "                           Repeat for every pinned peer\n"
    "  -n, --vectors N          interrupt vectors (eventfds) per peer, 1-64 (default\n"
    "                           1); give QEMU the same vectors=N\n"
    "  -c, --max-clients N      connections served at once, 1-4096 (default 64);\n"
    "                           further connections are closed with a log line\n"
    "  -t, --send-timeout SEC   drop a client that has not read its messages for SEC\n"
    "                           seconds, 1-3600 (default 5)\n"
    "  -M, --socket-mode MODE   permissions of the socket files, octal (default 0660)\n"
    "  -v, --verbose            log every message sent (debug level)\n"
    "  -q, --quiet              log warnings and errors only\n"
    "  -h, --help               show this help and exit\n"
    "  -V, --version            show the version and exit\n"
    "\n"
    "Example:\n"
    "  ivshm-server --shm /dev/shm/ivshm --vectors 2 --peer vm1=1:/run/ivshm/vm1.sock\n"
    "\n"
    "  It serves /dev/shm/ivshm; the VM started with the QEMU options\n"
    "  \"-chardev socket,path=/run/ivshm/vm1.sock,id=ivsrv\n"
    "  -device ivshmem-doorbell,chardev=ivsrv,vectors=2\" gets id 1.\n"
    "\n"
    "Exit status: 0 after SIGTERM or SIGINT, 1 on an error, 2 on a usage error.\n";

namespace {

int parse_int(std::string_view text, int lo, int hi, const char* what) {
  int value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value < lo || value > hi) {
    throw UsageError(std::string(what) + " '" + std::string(text) + "' is not a number from " + std::to_string(lo) +
                     " to " + std::to_string(hi));
  }
  return value;
}

PinnedPeer parse_peer(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos) throw UsageError("--peer '" + std::string(text) + "' is not NAME=ID[:PATH]");
  const auto colon = text.find(':', eq);
  PinnedPeer peer;
  peer.name = std::string(text.substr(0, eq));
  if (peer.name.empty() || peer.name.size() > 64 ||
      peer.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
          std::string::npos) {
    throw UsageError("--peer '" + std::string(text) + "': NAME must be 1-64 letters, digits, '-', '_' or '.'");
  }
  const auto id_end = colon == std::string_view::npos ? text.size() : colon;
  peer.id = parse_int(text.substr(eq + 1, id_end - eq - 1), 0, kMaxPeerId, "--peer id");
  if (colon != std::string_view::npos) {
    peer.socket_path = std::string(text.substr(colon + 1));
    if (peer.socket_path.empty()) throw UsageError("--peer '" + std::string(text) + "' has an empty PATH");
  }
  return peer;
}

void check_socket_path(const std::string& path, const char* what) {
  // sun_path holds 108 bytes including the terminating NUL.
  if (path.size() > 107) throw UsageError(std::string(what) + " '" + path + "' is longer than 107 bytes");
}

}  // namespace

ParsedCommandLine parse_command_line(int argc, char** argv) {
  static const option kLong[] = {
      {"shm", required_argument, nullptr, 'm'},
      {"socket", required_argument, nullptr, 'S'},
      {"peer", required_argument, nullptr, 'p'},
      {"vectors", required_argument, nullptr, 'n'},
      {"max-clients", required_argument, nullptr, 'c'},
      {"send-timeout", required_argument, nullptr, 't'},
      {"socket-mode", required_argument, nullptr, 'M'},
      {"verbose", no_argument, nullptr, 'v'},
      {"quiet", no_argument, nullptr, 'q'},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {nullptr, 0, nullptr, 0},
  };
  ParsedCommandLine parsed;
  Options& o = parsed.options;
  opterr = 0;
  optind = 1;
  int c = 0;
  while ((c = getopt_long(argc, argv, ":m:S:p:n:c:t:M:vqhV", kLong, nullptr)) != -1) {
    switch (c) {
      case 'm': o.shm_path = optarg; break;
      case 'S': o.socket_path = std::string(optarg) == "none" ? "" : optarg; break;
      case 'p': o.pinned.push_back(parse_peer(optarg)); break;
      case 'n': o.vectors = parse_int(optarg, 1, kMaxVectors, "--vectors"); break;
      case 'c': o.max_clients = parse_int(optarg, 1, 4096, "--max-clients"); break;
      case 't': o.send_timeout = std::chrono::seconds(parse_int(optarg, 1, 3600, "--send-timeout")); break;
      case 'M': {
        const std::string_view text(optarg);
        unsigned mode = 0;
        auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), mode, 8);
        if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || mode > 0777) {
          throw UsageError("--socket-mode '" + std::string(text) + "' is not an octal mode up to 0777");
        }
        o.socket_mode = mode;
        break;
      }
      case 'v': o.log_level = spdlog::level::debug; break;
      case 'q': o.log_level = spdlog::level::warn; break;
      case 'h': parsed.action = Action::help; return parsed;
      case 'V': parsed.action = Action::version; return parsed;
      case ':': throw UsageError(std::string("option '") + argv[optind - 1] + "' needs an argument");
      default: throw UsageError(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  if (optind < argc) throw UsageError(std::string("unexpected argument '") + argv[optind] + "'");
  if (o.shm_path.empty()) throw UsageError("--shm FILE is required");
  if (o.socket_path.empty() && o.pinned.empty()) {
    throw UsageError("--socket none leaves no socket: add --peer NAME=ID:PATH");
  }
  std::set<std::string> paths;
  std::set<int> ids;
  std::set<std::string> names;
  if (!o.socket_path.empty()) {
    check_socket_path(o.socket_path, "--socket");
    paths.insert(o.socket_path);
  }
  for (const auto& p : o.pinned) {
    if (p.socket_path.empty()) {
      if (o.socket_path.empty()) {
        throw UsageError("--peer " + p.name + "=" + std::to_string(p.id) +
                         " (by name) needs the shared socket: give it a PATH or drop --socket none");
      }
    } else {
      check_socket_path(p.socket_path, "--peer path");
      if (!paths.insert(p.socket_path).second) {
        throw UsageError("socket path '" + p.socket_path + "' is given twice");
      }
    }
    if (!ids.insert(p.id).second) throw UsageError("id " + std::to_string(p.id) + " is pinned twice");
    if (!names.insert(p.name).second) throw UsageError("peer name '" + p.name + "' is given twice");
  }
  if (!o.socket_path.empty() && static_cast<int>(ids.size()) > kMaxPeerId) {
    throw UsageError("every id is pinned: the shared socket has none left (use --socket none)");
  }
  return parsed;
}

void check_shm_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw UsageError("--shm '" + path + "': " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw UsageError("--shm '" + path + "' is not a regular file (create one, e.g. truncate -s 16M /dev/shm/ivshm)");
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < 4096 || (size & (size - 1)) != 0) {
    throw UsageError("--shm '" + path + "' is " + std::to_string(size) +
                     " bytes: QEMU maps it as a PCI BAR, which needs a power of two of at least 4096");
  }
}

}  // namespace ivshmfs::server
