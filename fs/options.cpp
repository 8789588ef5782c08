// SPDX-License-Identifier: MIT
#include "options.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <charconv>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <system_error>

#include <vector>
#include "ivshmfs/layout.h"

#include "ivshmfs/identity.hpp"

namespace ivshmfs::fs {
namespace {

// fuse_opt fills this C struct through offsetof; every value is kept as text
// and converted below, so a bad value gets a message that names the option.
struct RawOptions {
  char* id = nullptr;
  int create = 0;
  char* size = nullptr;
  char* partitions = nullptr;
  char* log = nullptr;
  char* uid = nullptr;
  char* gid = nullptr;
  char* umask = nullptr;
  char* poll_min_us = nullptr;
  char* poll_max_ms = nullptr;
  int read_only = 0;
  int page_cache = 0;
  int direct_io = 0;
  int nodoorbell = 0;
  int nofutex = 0;
  char* overrun = nullptr;
  char* server = nullptr;
  std::vector<std::string>* positional = nullptr;
};

constexpr int kKeyReadOnly = 1;

#define IVSHMFS_OPT(templ, field, value) \
  fuse_opt { templ, offsetof(RawOptions, field), value }

const fuse_opt kOptionSpecs[] = {
    IVSHMFS_OPT("id=%s", id, 0),
    IVSHMFS_OPT("create", create, 1),
    IVSHMFS_OPT("size=%s", size, 0),
    IVSHMFS_OPT("partitions=%s", partitions, 0),
    IVSHMFS_OPT("log=%s", log, 0),
    IVSHMFS_OPT("uid=%s", uid, 0),
    IVSHMFS_OPT("gid=%s", gid, 0),
    IVSHMFS_OPT("umask=%s", umask, 0),
    IVSHMFS_OPT("poll_min_us=%s", poll_min_us, 0),
    IVSHMFS_OPT("poll_max_ms=%s", poll_max_ms, 0),
    IVSHMFS_OPT("page_cache", page_cache, 1),
    IVSHMFS_OPT("direct_io", direct_io, 1),
    IVSHMFS_OPT("nodoorbell", nodoorbell, 1),
    IVSHMFS_OPT("nofutex", nofutex, 1),
    IVSHMFS_OPT("overrun=%s", overrun, 0),
    IVSHMFS_OPT("server=%s", server, 0),
    // Also FUSE's (the kernel mounts read-only): kept for it by keep_or_collect.
    FUSE_OPT_KEY("ro", kKeyReadOnly),
    FUSE_OPT_END,
};

#undef IVSHMFS_OPT

// Positional arguments (BACKEND, MOUNTPOINT) are taken out here, because
// fuse_parse_cmdline accepts only one; everything else stays for FUSE.
int keep_or_collect(void* data, const char* arg, int key, fuse_args* /*outargs*/) {
  if (key == FUSE_OPT_KEY_NONOPT) {
    static_cast<RawOptions*>(data)->positional->emplace_back(arg);
    return 0;
  }
  if (key == kKeyReadOnly) static_cast<RawOptions*>(data)->read_only = 1;
  return 1;
}

void free_raw(RawOptions& raw) {
  for (char* p : {raw.id, raw.size, raw.partitions, raw.log, raw.uid, raw.gid, raw.umask, raw.poll_min_us,
                  raw.poll_max_ms, raw.overrun, raw.server}) {
    std::free(p);  // NOLINT: fuse_opt allocates with malloc
  }
}

template <class T>
bool parse_number(std::string_view text, T& out, int base = 10) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out, base);
  return ec == std::errc{} && end == text.data() + text.size();
}

bool fail(const char* option, const char* value, const char* expected) {
  std::fprintf(stderr, "ivshmfs: bad value '%s' for -o %s: expected %s\n", value, option, expected);
  return false;
}

std::optional<spdlog::level::level_enum> parse_level(std::string_view name) {
  using spdlog::level::level_enum;
  if (name == "trace") return level_enum::trace;
  if (name == "debug") return level_enum::debug;
  if (name == "info") return level_enum::info;
  if (name == "warn" || name == "warning") return level_enum::warn;
  if (name == "error" || name == "err") return level_enum::err;
  if (name == "critical") return level_enum::critical;
  if (name == "off") return level_enum::off;
  return std::nullopt;
}

bool convert(const RawOptions& raw, Options& options) {
  options.ownership.uid = getuid();
  options.ownership.gid = getgid();
  if (raw.id != nullptr && std::string_view(raw.id) == "auto") {
    options.id_auto = true;
  } else if (raw.id != nullptr) {
    uint32_t id = 0;
    if (!parse_number(raw.id, id)) return fail("id", raw.id, "a partition number such as 0 or 1, or auto");
    options.id = id;
  }
  options.create = raw.create != 0;
  options.read_only = raw.read_only != 0;
  // -o page_cache is the default; it stays accepted so scripts written when
  // the cache was opt-in keep working. -o direct_io turns it off.
  options.page_cache = raw.direct_io == 0;
  options.doorbell = raw.nodoorbell == 0;
  options.futex = raw.nofutex == 0;
  if (raw.server != nullptr) {
    if (*raw.server == '\0') return fail("server", raw.server, "the path of ivshm-server's socket");
    const char* conflict = options.read_only   ? "-o ro (a read-only peer has no partition to be rung for)"
                           : options.id_auto   ? "-o id=auto (the server gives the id)"
                           : !options.doorbell ? "-o nodoorbell (the server's eventfds are doorbells)"
                                               : nullptr;
    if (conflict != nullptr) {
      std::fprintf(stderr, "ivshmfs: -o server= does not go with %s\n", conflict);
      return false;
    }
    options.server = raw.server;
  }
  if (raw.overrun != nullptr) {
    const std::string_view mode = raw.overrun;
    if (mode != "error" && mode != "skip") return fail("overrun", raw.overrun, "error or skip");
    options.overrun_skip = mode == "skip";
  }
  if (raw.size != nullptr) {
    auto size = parse_size(raw.size);
    if (!size || *size == 0) return fail("size", raw.size, "a size such as 64M or 1G");
    options.create_size = *size;
    if (options.id_auto && raw.create == 0) {
      if (*size % IVSHMFS_PAGE_SIZE != 0) return fail("size", raw.size, "a multiple of 4K with id=auto, e.g. 1M");
      options.join_size = *size;
    }
  }
  if (raw.partitions != nullptr) {
    uint32_t n = 0;
    if (!parse_number(raw.partitions, n) || n == 0) return fail("partitions", raw.partitions, "a count such as 4");
    options.partitions = n;
  }
  if ((raw.partitions != nullptr || (raw.size != nullptr && !options.join_size)) && !options.create) {
    std::fprintf(stderr,
                 "ivshmfs: -o size= only applies with -o create or -o id=auto, -o partitions= only with -o create\n");
    return false;
  }
  if (raw.log != nullptr) {
    auto level = parse_level(raw.log);
    if (!level) return fail("log", raw.log, "trace, debug, info, warn, error, critical or off");
    options.log_level = *level;
  }
  if (raw.uid != nullptr) {
    uid_t uid = 0;
    if (!parse_number(raw.uid, uid)) {
      const passwd* pw = getpwnam(raw.uid);  // NOLINT: runs once, before any thread
      if (pw == nullptr) return fail("uid", raw.uid, "a user name or number");
      uid = pw->pw_uid;
    }
    options.ownership.uid = uid;
  }
  if (raw.gid != nullptr) {
    gid_t gid = 0;
    if (!parse_number(raw.gid, gid)) {
      const group* gr = getgrnam(raw.gid);  // NOLINT: runs once, before any thread
      if (gr == nullptr) return fail("gid", raw.gid, "a group name or number");
      gid = gr->gr_gid;
    }
    options.ownership.gid = gid;
  }
  if (raw.umask != nullptr) {
    unsigned mask = 0;
    if (!parse_number(raw.umask, mask, 8) || mask > 0777) return fail("umask", raw.umask, "octal bits such as 022");
    options.ownership.umask = static_cast<mode_t>(mask);
  }
  if (raw.poll_min_us != nullptr) {
    unsigned us = 0;
    if (!parse_number(raw.poll_min_us, us) || us == 0) return fail("poll_min_us", raw.poll_min_us, "microseconds > 0");
    options.poll.min = std::chrono::microseconds(us);
  }
  if (raw.poll_max_ms != nullptr) {
    unsigned ms = 0;
    if (!parse_number(raw.poll_max_ms, ms) || ms == 0) return fail("poll_max_ms", raw.poll_max_ms, "milliseconds > 0");
    options.poll.max = std::chrono::milliseconds(ms);
  }
  if (options.poll.max < options.poll.min) options.poll.max = options.poll.min;
  return true;
}

void print_usage(const char* program) {
  std::printf("usage: %s [options] [BACKEND] MOUNTPOINT\n       %s --help\n", program, program);
}

void print_help(const char* program) {
  std::printf(
      "NAME\n"
      "    ivshmfs - mount an ivshmem shared-memory region as a directory\n"
      "\n"
      "SYNOPSIS\n"
      "    %s [options] [BACKEND] MOUNTPOINT\n"
      "    mount -t fuse.ivshmfs BACKEND MOUNTPOINT -o id=N[,allow_other,...]\n"
      "\n"
      "DESCRIPTION\n"
      "    Each partition of the region becomes a file vmN in MOUNTPOINT. The own\n"
      "    partition (-o id=N) is writable by this peer only, and only at its end:\n"
      "    a write on an O_APPEND descriptor or at the current end appends, a\n"
      "    write anywhere else fails with EPERM. Every partition is readable (and\n"
      "    mappable). follow/vmN reads like vmN but waits at the end of the data\n"
      "    for more: stream it with 'cat follow/vmN'; to watch a file use\n"
      "    'tail -f vmN' (tail -f on follow/vmN waits for an end that never\n"
      "    comes). .status describes the region.\n"
      "\n"
      "    BACKEND is a host file (e.g. /dev/shm/ivshm), /dev/ivshmN of the ivshm\n"
      "    driver, or a PCI resource2 file. When omitted, the first ivshmem\n"
      "    device of this system is used.\n"
      "\n"
      "IVSHMFS OPTIONS\n"
      "    -o id=N              this peer's partition (default: on an\n"
      "                         ivshmem-doorbell device the IVPosition the\n"
      "                         server gave, else from the hostname, vmN,\n"
      "                         vmN-suffix or N_suffix)\n"
      "    -o id=auto[,size=SIZE]\n"
      "                         join a running region: claim the lowest\n"
      "                         partition whose claim is free or stale; if\n"
      "                         none, add a partition of SIZE (a multiple of\n"
      "                         4K; default: the largest free extent) to a\n"
      "                         region formatted with free table slots\n"
      "                         ('ivshmctl format --slots'); every mounted peer\n"
      "                         shows the new vmN without a remount\n"
      "    -o create            create and format BACKEND if it is a missing or\n"
      "                         blank host file (its whole header area zero, as\n"
      "                         a new sparse file); anything else is never\n"
      "                         formatted: a damaged region is reported\n"
      "    -o size=SIZE         size of a created region, e.g. 64M (default 64M);\n"
      "                         with id=auto and without create: the size of\n"
      "                         a partition to add\n"
      "    -o partitions=N      partitions of a created region (default 4)\n"
      "    -o log=LEVEL         trace, debug, info (default), warn, error, off\n"
      "    -o uid=USER          owner of the files (default: the daemon's user)\n"
      "    -o gid=GROUP         group of the files (default: the daemon's group)\n"
      "    -o umask=MASK        octal; own file 0666&~MASK, others 0444&~MASK\n"
      "                         (default 022)\n"
      "    -o poll_min_us=N     fastest polling of peers' partitions, used while\n"
      "                         data flows to a poll or follow/ reader: for\n"
      "                         20 ms after a peer's change (default 50)\n"
      "    -o poll_max_ms=N     slowest polling, reached by doubling once idle\n"
      "                         (default 50)\n"
      "    -o nodoorbell        poll even on a device with doorbells (by default\n"
      "                         an ivshmem-doorbell device whose IVPosition is\n"
      "                         the partition id wakes readers by interrupts\n"
      "                         and polls nothing; see docs/filesystem.md)\n"
      "    -o nofutex           poll even on a host file (by default a peer that\n"
      "                         owns a partition there waits on a futex that\n"
      "                         writers on this host wake after each commit,\n"
      "                         and polls only partitions of other systems)\n"
      "    -o server=SOCKET     on a host file: join ivshm-server (its Unix\n"
      "                         socket SOCKET) as a peer: the server's id is\n"
      "                         this peer's partition (an -o id= must equal\n"
      "                         it), its shared memory must be BACKEND (or a\n"
      "                         piece of it), and its eventfds ring guests and\n"
      "                         other clients after a commit and wake this\n"
      "                         peer's readers; owners that are not clients\n"
      "                         are polled. If the server goes away, readers'\n"
      "                         partitions are polled (.status server=lost)\n"
      "    -o ro                a read-only peer: opens and maps BACKEND\n"
      "                         read-only (a read-only file works), mounts\n"
      "                         read-only and claims no partition (every file\n"
      "                         0444, writes fail with EROFS); -o id= is not\n"
      "                         needed\n"
      "    -o direct_io         no page cache: every read() of a file is one\n"
      "                         request to the daemon, and mmap fails with\n"
      "                         ENODEV. By default files opened for reading go\n"
      "                         through the kernel's page cache (readahead,\n"
      "                         mmap), which the daemon keeps coherent with\n"
      "                         appends and resets (docs/filesystem.md,\n"
      "                         Coherence); a read racing a peer's reset can\n"
      "                         fail with ESTALE (read again)\n"
      "    -o page_cache        the default (on a host file and on an ivshm\n"
      "                         device); accepted for older scripts\n"
      "    -o overrun=MODE      what a reader of a ring partition that its writer\n"
      "                         lapped (overwrote bytes it had not read yet) sees:\n"
      "                         error (default): its next read fails once with\n"
      "                         EPIPE, the one after goes on at the oldest\n"
      "                         retained byte; skip: it goes on there silently,\n"
      "                         the bytes skipped are counted in the file's\n"
      "                         extended attribute user.ivshmfs.skipped\n"
      "\n"
      "EXIT STATUS\n"
      "    0 after a clean unmount; 1 when an option is unknown, MOUNTPOINT is\n"
      "    not a directory, the region cannot be opened, the partition is owned\n"
      "    by a live daemon, or mounting fails (the reason is printed on stderr\n"
      "    before the daemon detaches). If the backend file shrinks or runs out\n"
      "    of space while mounted, the daemon stays up: accesses fail with EIO\n"
      "    (or ENOSPC) and the reason is logged once.\n"
      "\n"
      "See docs/filesystem.md for the files, .status, extended attributes and\n"
      "coherence between peers.\n"
      "\n"
      "FUSE OPTIONS\n",
      program);
}

// Whether FUSE accepts every option left for it. Checked now, with a scratch
// session, so that a mistyped option (-o idd=0) is reported as what it is
// before the backend is opened and the id resolved (which would otherwise
// fail first, for an unrelated reason).
bool fuse_accepts(const fuse_args& args) {
  fuse_args copy = FUSE_ARGS_INIT(0, nullptr);
  bool ok = true;
  for (int i = 0; i < args.argc && ok; ++i) ok = fuse_opt_add_arg(&copy, args.argv[i]) == 0;
  if (ok) {
    const fuse_lowlevel_ops no_operations{};
    fuse_session* probe = fuse_session_new(&copy, &no_operations, sizeof no_operations, nullptr);
    ok = probe != nullptr;  // libfuse printed which option it does not know
    if (probe != nullptr) fuse_session_destroy(probe);
  }
  fuse_opt_free_args(&copy);
  return ok;
}

}  // namespace

ParseOutcome parse_options(fuse_args& args, Options& options) {
  const char* program = args.argc > 0 ? args.argv[0] : "ivshmfs";
  std::vector<std::string> positional;
  RawOptions raw;
  raw.positional = &positional;
  if (fuse_opt_parse(&args, &raw, kOptionSpecs, keep_or_collect) == -1) {
    free_raw(raw);
    return ParseOutcome::exit_failure;
  }
  const bool converted = convert(raw, options);
  free_raw(raw);
  if (!converted) return ParseOutcome::exit_failure;

  if (positional.size() > 2) {
    std::fprintf(stderr, "ivshmfs: too many arguments: '%s'\n", positional[2].c_str());
    print_usage(program);
    return ParseOutcome::exit_failure;
  }
  if (positional.size() == 2) options.backend = positional[0];
  if (!positional.empty() && fuse_opt_add_arg(&args, positional.back().c_str()) != 0) {
    return ParseOutcome::exit_failure;
  }

  fuse_cmdline_opts cmdline{};
  if (fuse_parse_cmdline(&args, &cmdline) != 0) return ParseOutcome::exit_failure;
  const auto release_mountpoint = [&] { std::free(cmdline.mountpoint); };  // NOLINT: malloc'd by libfuse
  if (cmdline.show_help) {
    print_help(program);
    fuse_cmdline_help();
    fuse_lowlevel_help();
    release_mountpoint();
    return ParseOutcome::exit_success;
  }
  if (cmdline.show_version) {
    std::printf("ivshmfs version %s\nFUSE library version %s\n", IVSHMFS_VERSION, fuse_pkgversion());
    fuse_lowlevel_version();
    release_mountpoint();
    return ParseOutcome::exit_success;
  }
  if (cmdline.mountpoint == nullptr) {
    std::fprintf(stderr, "ivshmfs: no mount point given\n");
    print_usage(program);
    return ParseOutcome::exit_failure;
  }
  options.mountpoint = cmdline.mountpoint;
  release_mountpoint();
  options.foreground = cmdline.foreground != 0;
  options.debug = cmdline.debug != 0;
  options.singlethread = cmdline.singlethread != 0;
  options.clone_fd = cmdline.clone_fd;
  options.max_idle_threads = cmdline.max_idle_threads;
  options.max_threads = cmdline.max_threads;
  if (options.debug && options.log_level > spdlog::level::debug) options.log_level = spdlog::level::debug;
  if (!fuse_accepts(args)) {
    std::fprintf(stderr, "ivshmfs: unknown option; see '%s --help' for the options\n", program);
    return ParseOutcome::exit_failure;
  }
  return ParseOutcome::run;
}

}  // namespace ivshmfs::fs
