// SPDX-License-Identifier: MIT
// ivshmfs: mounts a shared region as a directory. The order of main() is
// libfuse's: parse the command line, open what we serve, create the FUSE instance,
// set signal handlers, mount, detach, loop, unmount. Everything that can fail
// for a reason the user must see (no backend, id not in the region, partition
// owned by a live daemon) happens before detaching, so it reaches stderr and
// the exit status.
#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "daemon.hpp"
#include "filesystem.hpp"
#include "ivshmfs/backend.hpp"
#include "ivshmfs/identity.hpp"
#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"
#include "logging.hpp"
#include "options.hpp"
#include "server_client.hpp"
#include "status.hpp"

namespace ivshmfs::fs {
namespace {

// With -o create, a missing host file is created and formatted, and so is a
// blank one (its whole header area zero, as QEMU and truncate create it).
// Anything else is left alone: a region we cannot read is reported, never
// overwritten. -o ro opens and maps the backend read-only.
Result<std::shared_ptr<Region>> open_region(const Options& options, const std::string& path) {
  RegionOpenOptions open_options;
  open_options.writable = !options.read_only;
  open_options.create = options.create;
  open_options.create_size = options.create_size;
  open_options.create_partitions = options.partitions;
  // A split region: only this peer's piece is opened read-write. With
  // -o id=auto the own piece is not known yet (it may be one created here):
  // the pieces are opened read-write, as the host's administration does.
  if (!options.read_only && !options.id_auto) {
    if (auto identity = resolve_peer_id(options.id, nullptr)) open_options.own_id = identity->id;
  }
  return Region::open_path(path, open_options);
}

// FUSE mounts over whatever the mount point is; over a file, the file is
// hidden and every access fails. Refused here, before anything is opened.
bool mountpoint_usable(const std::string& mountpoint) {
  struct stat st {};
  if (::stat(mountpoint.c_str(), &st) != 0) {
    spdlog::error("mount point {}: {}", mountpoint, std::strerror(errno));
    return false;
  }
  if (!S_ISDIR(st.st_mode)) {
    spdlog::error("mount point {} is not a directory", mountpoint);
    return false;
  }
  return true;
}

// Adds -o fsname=BACKEND,subtype=ivshmfs,default_permissions in front of the
// user's options, so that theirs win and /proc/mounts shows fuse.ivshmfs.
bool add_mount_options(fuse_args& args, const std::string& backend) {
  std::string escaped;
  for (char c : backend) {
    if (c == ',' || c == '\\') escaped.push_back('\\');
    escaped.push_back(c);
  }
  const std::string opts = "-ofsname=" + escaped + ",subtype=ivshmfs,default_permissions";
  return fuse_opt_insert_arg(&args, 1, opts.c_str()) == 0;
}

// The multi-threaded loop's settings from -o clone_fd, max_threads= and
// max_idle_threads=. fuse_parse_cmdline leaves max_idle_threads at UINT_MAX
// ("never stop idle threads") when it is not given, which libfuse's setter
// would report as an invalid value: the loop config's default is that already.
struct LoopConfigDeleter {
  void operator()(fuse_loop_config* c) const noexcept { fuse_loop_cfg_destroy(c); }
};
std::unique_ptr<fuse_loop_config, LoopConfigDeleter> loop_config(const Options& options) {
  constexpr unsigned kMaxThreadsLimit = 100000;  // libfuse's FUSE_LOOP_MT_MAX_THREADS
  std::unique_ptr<fuse_loop_config, LoopConfigDeleter> config(fuse_loop_cfg_create());
  if (!config) throw std::bad_alloc();
  fuse_loop_cfg_set_clone_fd(config.get(), static_cast<unsigned>(options.clone_fd));
  if (options.max_idle_threads <= kMaxThreadsLimit)
    fuse_loop_cfg_set_idle_threads(config.get(), options.max_idle_threads);
  if (options.max_threads != 0 && options.max_threads <= kMaxThreadsLimit) {
    fuse_loop_cfg_set_max_threads(config.get(), options.max_threads);
  } else if (options.page_cache) {
    // With the page cache (the default), an attribute reply of a growing
    // file may wait, a bounded time, for reads in flight and for the
    // notifier's drop of a short last page, which waits for the reads of
    // that page: those need a free worker. With libfuse's default of 10
    // workers, ten programs stat()ing a growing file would hold every
    // worker for that bound. Allow many more workers (they exist only while
    // requests wait), and let idle ones go.
    constexpr unsigned kCachedMaxThreads = 1000;
    constexpr unsigned kCachedIdleThreads = 16;
    fuse_loop_cfg_set_max_threads(config.get(), kCachedMaxThreads);
    if (options.max_idle_threads > kMaxThreadsLimit) fuse_loop_cfg_set_idle_threads(config.get(), kCachedIdleThreads);
  }
  return config;
}

// -o id=auto: the lowest partition whose claim is free or stale, else a new
// partition added to a live table (of join_size bytes, or the largest free
// extent). Peers joining at once may take the same one: the loser tries the
// next.
Result<std::unique_ptr<PartitionWriter>> join(const std::shared_ptr<Region>& region, const Options& options) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (auto r = region->refresh_table(); !r) spdlog::warn("{}", r.error().message);
    for (const PartitionInfo& p : region->partitions()) {
      auto st = region->stat(p.id);
      if (!st || (st->claimed && st->alive)) continue;
      auto claimed = PartitionWriter::claim(region, p.id);
      if (claimed) {
        spdlog::info("id=auto: partition {} was {}", p.id, st->claimed ? "claimed by a stale owner" : "unclaimed");
        return claimed;
      }
      if (claimed.error().code != Errc::claimed) return claimed;
    }
    if (region->scans_pieces()) {
      // A split region grows by a new piece of the size asked for.
      if (!options.join_size) {
        return make_error(Errc::invalid_argument,
                          region->path() +
                              ": id=auto: every partition has a live owner; pass size=S (a power of "
                              "two, e.g. size=1M) to add a piece for this peer");
      }
      auto added = region->add_partition(NewPartition{std::nullopt, *options.join_size, false});
      if (!added) {
        if (added.error().code == Errc::already_formatted) continue;  // another peer took that id just now
        return std::move(added).error();
      }
      spdlog::info("id=auto: added partition {} (piece {}, {})", added->id, split_piece_path(region->path(), added->id),
                   format_size(added->capacity));
      auto claimed = PartitionWriter::claim(region, added->id);
      if (claimed || claimed.error().code != Errc::claimed) return claimed;
      continue;
    }
    if (!region->live_table()) {
      return make_error(Errc::claimed, region->path() +
                                           ": id=auto: every partition has a live owner, and the partition table is "
                                           "fixed (format with 'ivshmctl format --slots N' to let peers join)");
    }
    const FreeSpace free = region->free_space();
    const uint64_t size = options.join_size.value_or(free.largest);
    if (size == 0) {
      return make_error(Errc::no_space,
                        region->path() + ": id=auto: every partition has a live owner and there is no " +
                            "room for another (" + std::to_string(free.free_slots) + " free table slots, " +
                            format_size(free.largest) + " in the largest free extent)");
    }
    auto added = region->add_partition(NewPartition{std::nullopt, size, false});
    if (!added) return std::move(added).error();
    spdlog::info("id=auto: added partition {} ({})", added->id, format_size(added->capacity));
    auto claimed = PartitionWriter::claim(region, added->id);
    if (claimed || claimed.error().code != Errc::claimed) return claimed;
  }
  return make_error(Errc::busy, region->path() + ": id=auto: other peers kept taking the free partitions; try again");
}

// -o server=SOCKET: joins ivshm-server first, since its id is this peer's
// partition (and opens the own piece of a split region read-write).
Result<std::unique_ptr<ServerClient>> join_server(Options& options) {
  auto client = ServerClient::connect(*options.server);
  if (!client) return client;
  const uint32_t id = (*client)->id();
  if (options.id && *options.id != id) {
    return make_error(Errc::invalid_argument,
                      fmt::format("-o id={} but ivshm-server {} gave this peer id {}: peers would ring partition {}'s "
                                  "owner for our commits; drop -o id=, or pin id {} to this peer in the server "
                                  "(--peer NAME={}:SOCKET)",
                                  *options.id, *options.server, id, id, *options.id, *options.id));
  }
  options.id = id;
  return client;
}

int serve(fuse_args& args, Options options, Detacher& detacher) {
  if (!mountpoint_usable(options.mountpoint)) return 1;
  std::unique_ptr<ServerClient> server;
  if (options.server) {
    auto joined = join_server(options);
    if (!joined) {
      spdlog::error("{}", joined.error().message);
      return 1;
    }
    server = std::move(*joined);
    spdlog::info("ivshm-server {}: joined as peer {}", *options.server, server->id());
  }
  std::string path;
  Result<std::shared_ptr<Region>> region = make_error(Errc::invalid_argument, "no region");
  std::optional<uint32_t> discovered_id;  // the own piece of a split region, found by its probe
  if (options.backend) {
    path = *options.backend;
    region = open_region(options, path);
  } else if (find_all_backends().empty()) {
    spdlog::error(
        "no BACKEND given and no ivshmem device found (no /dev/ivshmN, no PCI device 1af4:1110): "
        "pass a host file, e.g. 'ivshmfs -o create,size=64M /dev/shm/ivshm {}', or /dev/ivshm0",
        options.mountpoint);
    return 1;
  } else {
    // Inside a guest: every ivshmem device; the pieces of a split region are
    // grouped, a single-file region is the first device.
    std::optional<uint32_t> own_id;
    if (!options.read_only) {
      if (auto identity = resolve_peer_id(options.id, nullptr)) own_id = identity->id;
    }
    region = Region::discover(own_id, !options.read_only, &discovered_id);
    if (!region) {
      spdlog::error("no BACKEND given: {}", region.error().message);
      return 1;
    }
    path = (*region)->path();
  }
  if (!region) {
    spdlog::error("{}", region.error().message);
    if (region.error().code == Errc::not_formatted) spdlog::error("format it with ivshmctl, or pass -o create");
    return 1;
  }
  const Backend& backend = *(*region)->backends().front();
  if ((*region)->split()) {
    spdlog::info("{}: split region of {} {} pieces, {}, {} partitions present, format id {:#018x}", path,
                 (*region)->info().split_pieces, to_string(backend.kind()), format_size((*region)->info().region_size),
                 (*region)->info().partition_count, (*region)->info().format_id);
  } else {
    spdlog::info("{}: {} region, {}, {} partitions, format id {:#018x}", path, to_string(backend.kind()),
                 format_size(backend.size()), (*region)->info().partition_count, (*region)->info().format_id);
  }

  if (server) {
    std::vector<std::string> paths;
    for (const Backend* b : (*region)->backends()) {
      if (b->kind() != BackendKind::host_file) {
        spdlog::error(
            "-o server= joins ivshm-server from the host, over a host file; {} is {} (in a guest, the "
            "ivshmem-doorbell device is the server's client)",
            b->path(), to_string(b->kind()));
        return 1;
      }
      paths.push_back(b->path());
    }
    if (auto same = server->same_file_as(paths); !same) {
      spdlog::error("{}", same.error().message);
      return 1;
    }
  }

  std::unique_ptr<PartitionWriter> writer;
  if (options.read_only) {
    // A peer that only watches (e.g. a host): it owns no partition, so it
    // claims none and does not need an id.
    if (options.id)
      spdlog::info("read-only (-o ro): -o id={} ignored, no partition claimed", *options.id);
    else
      spdlog::info("read-only (-o ro): no partition claimed");
  } else if (options.id_auto) {
    auto claimed = join(*region, options);
    if (!claimed) {
      spdlog::error("{}", claimed.error().message);
      return 1;
    }
    writer = std::move(*claimed);
    spdlog::info("claimed partition {} ({})", writer->id(), partition_file_name(writer->id()));
  } else {
    auto identity = server ? Result<PeerIdentity>(PeerIdentity{server->id(), "ivshm-server " + *options.server})
                    : discovered_id && !options.id
                        ? Result<PeerIdentity>(PeerIdentity{*discovered_id, "the only writable piece"})
                        : resolve_peer_id(options.id, &backend);
    if (!identity) {
      spdlog::error("{}; pass -o id=N", identity.error().message);
      return 1;
    }
    spdlog::info("peer id {} (from {})", identity->id, identity->source);
    if ((*region)->find(identity->id) == nullptr) {
      std::string ids;
      for (const auto& p : (*region)->partitions()) ids += (ids.empty() ? "" : ", ") + std::to_string(p.id);
      spdlog::error("{}: peer id {} has no partition in this region (partitions: {}); pass -o id=N", path, identity->id,
                    ids);
      return 1;
    }

    auto claimed = PartitionWriter::claim(*region, identity->id);
    if (!claimed) {
      spdlog::error("{}", claimed.error().message);
      return 1;
    }
    writer = std::move(*claimed);
    spdlog::info("claimed partition {} ({})", identity->id, partition_file_name(identity->id));
  }

  Filesystem filesystem(*region, std::move(writer), options, std::move(server));
  if (!add_mount_options(args, path)) return 1;
  fuse_session* fuse = fuse_session_new(&args, &Filesystem::operations(), sizeof(fuse_lowlevel_ops), &filesystem);
  if (fuse == nullptr) return 1;  // libfuse printed why
  int status = 1;
  if (fuse_set_signal_handlers(fuse) == 0) {
    if (fuse_session_mount(fuse, options.mountpoint.c_str()) == 0) {
      detacher.succeed();
      if (!options.foreground) log_to_syslog(options.log_level);
      spdlog::info("mounted {} on {}", path, options.mountpoint);
      filesystem.start(fuse);
      int loop = 0;
      if (options.singlethread) {
        loop = fuse_session_loop(fuse);
      } else {
        loop = fuse_session_loop_mt(fuse, loop_config(options).get());
      }
      filesystem.stop();
      fuse_session_unmount(fuse);
      // The loop returns the signal that ended it: SIGTERM, SIGINT and SIGHUP
      // are the ordinary ways to stop a daemon, not failures.
      status = loop == 0 || loop == SIGTERM || loop == SIGINT || loop == SIGHUP ? 0 : 1;
      if (options.read_only)
        spdlog::info("unmounted {}", options.mountpoint);
      else
        spdlog::info("unmounted {}; releasing partition {}", options.mountpoint, filesystem.self_id().value_or(0));
    }
    fuse_remove_signal_handlers(fuse);
  }
  fuse_session_destroy(fuse);
  return status;
}

}  // namespace
}  // namespace ivshmfs::fs

int main(int argc, char* argv[]) try {
  using namespace ivshmfs::fs;
  // Before anything is opened: a backend must never become stdin, stdout or
  // stderr, where a log line or a read would reach the shared region.
  if (auto r = ivshmfs::ensure_standard_descriptors(); !r) return 1;
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  Options options;
  const ParseOutcome parsed = parse_options(args, options);
  if (parsed != ParseOutcome::run) {
    fuse_opt_free_args(&args);
    return parsed == ParseOutcome::exit_success ? 0 : 1;
  }
  log_to_stderr(options.log_level);
  Detacher detacher(options.foreground);  // the parent waits here for the outcome
  const int status = serve(args, options, detacher);
  fuse_opt_free_args(&args);
  return status;
} catch (const std::exception& e) {
  std::fprintf(stderr, "ivshmfs: %s\n", e.what());
  return 1;
}
