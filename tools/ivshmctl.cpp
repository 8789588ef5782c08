// SPDX-License-Identifier: MIT
// ivshmctl: format, inspect, read, write and reset an ivshmfs region.
#include <getopt.h>
#include <unistd.h>
#include <climits>
#include <cstdlib>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "ivshmfs/identity.hpp"
#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace {

using namespace ivshmfs;

constexpr std::size_t kChunk = 1 << 20;

const char* const kUsage =
    "Usage: ivshmctl COMMAND [OPTIONS] [BACKEND] [ID]\n"
    "\n"
    "Administer an ivshmfs shared region. BACKEND is a host file (e.g. /dev/shm/ivshm),\n"
    "an ivshm device (/dev/ivshm0) or a PCI resource file (.../resource2), or the PREFIX\n"
    "of a split region (one file per partition: PREFIX.vm0, PREFIX.vm1, ...). Left out,\n"
    "it is the first ivshmem device: /dev/ivshmN, else the first 1af4:1110 resource2.\n"
    "\n"
    "Commands:\n"
    "  format [--size SIZE] [--partitions N] [--partition ID=[SIZE][,ring]]... [--ring]\n"
    "         [--slots N [--free SIZE]] [--force] BACKEND\n"
    "                         lay out a fresh region (every partition empty)\n"
    "  format --split --size SIZE [--partitions N] [--force] PREFIX\n"
    "                         lay out a split region: PREFIX.vm0 .. PREFIX.vm{N-1}\n"
    "  status [--json] BACKEND\n"
    "                         show the layout and every partition's owner and length\n"
    "  add [--id N] --size SIZE [--ring] BACKEND\n"
    "                         add a partition to a running region (format --slots),\n"
    "                         or a piece PREFIX.vmN to a split region\n"
    "  remove --id N BACKEND  remove partition N (no live owner) so its space is reused\n"
    "  read BACKEND ID        write partition ID's committed bytes to stdout\n"
    "  write [--force] BACKEND ID\n"
    "                         append stdin to partition ID\n"
    "  reset [--force] BACKEND ID\n"
    "                         truncate partition ID to zero bytes\n"
    "  qemu-args [--libvirt] [--bridge] [--hotplug N | --unplug N] --peer K BACKEND\n"
    "                         print the QEMU options attaching the region to VM K\n"
    "                         (or the QMP commands hot-plugging piece N)\n"
    "\n"
    "Run 'ivshmctl COMMAND --help' for a command's options.\n"
    "Exit status: 0 on success, 1 on error, 2 on a usage error.\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "ivshmctl: %s\nTry 'ivshmctl --help'.\n", message.c_str());
  return 2;
}

int fail(const Error& error) {
  std::fprintf(stderr, "ivshmctl: %s\n", error.message.c_str());
  return 1;
}

std::string iso_time(uint64_t ns) {
  if (ns == 0) return "-";
  const time_t secs = static_cast<time_t>(ns / 1'000'000'000ULL);
  tm local{};
  char out[64];
  if (localtime_r(&secs, &local) == nullptr) return "-";
  std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%S", &local);
  char frac[16];
  std::snprintf(frac, sizeof frac, ".%03" PRIu64, static_cast<uint64_t>((ns / 1000000U) % 1000U));
  return std::string(out) + frac;
}

// Parses a partition id argument.
std::optional<uint32_t> parse_id(const char* text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long value = std::strtoul(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || value > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(value);
}

struct Args {
  std::vector<std::string> positional;
  std::optional<std::string> size;
  std::optional<std::string> partitions;
  std::optional<std::string> peer;
  std::optional<std::string> slots;
  std::optional<std::string> free;
  std::optional<std::string> id;
  std::optional<std::string> hotplug;
  std::optional<std::string> unplug;
  std::vector<std::string> partition;  // --partition ID=[SIZE][,ring], repeatable
  bool ring = false;
  bool force = false;
  bool split = false;
  bool libvirt = false;
  bool bridge = false;
  bool json = false;
  bool help = false;
};

// Parses the options a command accepts ("size", "partitions", "force", "json"),
// before or after its operands (`qemu-args PREFIX --peer 1` as well as
// `qemu-args --peer 1 PREFIX`).
std::optional<Args> parse_args(int argc, char** argv, const std::vector<std::string>& allowed, std::string* error) {
  Args args;
  std::vector<option> longopts;
  for (const auto& name : allowed) {
    const bool has_value = name == "size" || name == "partitions" || name == "partition" || name == "peer" ||
                           name == "slots" || name == "free" || name == "id" || name == "hotplug" || name == "unplug";
    longopts.push_back({name.c_str(), has_value ? required_argument : no_argument, nullptr, 0});
  }
  longopts.push_back({"help", no_argument, nullptr, 'h'});
  longopts.push_back({nullptr, 0, nullptr, 0});
  optind = 1;
  opterr = 0;
  int index = 0;
  for (;;) {
    const int c = getopt_long(argc, argv, "h", longopts.data(), &index);
    if (c == -1) break;
    if (c == 'h') {
      args.help = true;
      continue;
    }
    if (c == '?' || c == ':') {
      *error = std::string("unknown or incomplete option '") + argv[optind - 1] + "'";
      return std::nullopt;
    }
    const std::string name = longopts[static_cast<std::size_t>(index)].name;
    if (name == "size") args.size = optarg;
    if (name == "partitions") args.partitions = optarg;
    if (name == "partition") args.partition.emplace_back(optarg);
    if (name == "ring") args.ring = true;
    if (name == "force") args.force = true;
    if (name == "json") args.json = true;
    if (name == "split") args.split = true;
    if (name == "libvirt") args.libvirt = true;
    if (name == "bridge") args.bridge = true;
    if (name == "peer") args.peer = optarg;
    if (name == "slots") args.slots = optarg;
    if (name == "free") args.free = optarg;
    if (name == "id") args.id = optarg;
    if (name == "hotplug") args.hotplug = optarg;
    if (name == "unplug") args.unplug = optarg;
  }
  for (int i = optind; i < argc; ++i) args.positional.emplace_back(argv[i]);
  return args;
}

// `own` names the one partition to write: in a split region only its piece
// is opened read-write.
Result<std::shared_ptr<Region>> open_region(const std::string& path, bool writable,
                                            std::optional<uint32_t> own = std::nullopt) {
  RegionOpenOptions options;
  options.writable = writable;
  options.own_id = own;
  return Region::open_path(path, options);
}

// Progress of allocating a large new file, on a terminal only.
void show_progress(uint64_t done, uint64_t total) {
  constexpr uint64_t kWorthShowing = uint64_t{1} << 30;
  if (total < kWorthShowing) return;
  std::fprintf(stderr, "\rivshmctl: allocating %s of %s (%3u%%)", format_size(done).c_str(), format_size(total).c_str(),
               static_cast<unsigned>(done * 100 / total));
  if (done == total) std::fputc('\n', stderr);
}

int cmd_format_split(const Args& args, uint32_t partitions) {
  const std::string& prefix = args.positional[0];
  if (!args.size) return usage_error("format --split needs --size SIZE (the size of each piece, a power of two)");
  auto size = parse_size(*args.size);
  if (!size) return usage_error(size.error().message);
  if ((*size & (*size - 1)) != 0 || *size < uint64_t{2} * IVSHMFS_PAGE_SIZE) {
    return usage_error("--size " + *args.size +
                       " is not a power of two of at least 8K: each piece becomes a PCI BAR, " +
                       "whose size is a power of two (e.g. --size 1M)");
  }
  if (auto r = Region::format_split(prefix, partitions, *size, args.force); !r) return fail(r.error());
  auto region = open_region(prefix, false);
  if (!region) return fail(region.error());
  std::printf("formatted split region %s: %u pieces %s.vm0 .. %s.vm%u of %s, each one partition of %s\n",
              prefix.c_str(), partitions, prefix.c_str(), prefix.c_str(), partitions - 1, format_size(*size).c_str(),
              format_size((*region)->partitions().front().capacity).c_str());
  return 0;
}

int cmd_format(const Args& args) {
  if (args.positional.size() != 1) return usage_error("format takes one BACKEND");
  const std::string& path = args.positional[0];
  if (args.split) {
    if (args.ring || !args.partition.empty()) {
      return usage_error(
          "format --split takes neither --ring nor --partition: every piece holds one log "
          "partition of the piece's size");
    }
    uint32_t partitions = 4;
    if (args.partitions) {
      auto n = parse_id(args.partitions->c_str());
      if (!n || *n == 0 || *n > IVSHMFS_MAX_PARTITIONS) {
        return usage_error("--partitions '" + *args.partitions + "' is not a number from 1 to " +
                           std::to_string(IVSHMFS_MAX_PARTITIONS));
      }
      partitions = *n;
    }
    return cmd_format_split(args, partitions);
  }
  if (Region::is_split_prefix(path)) {
    return fail(make_error(Errc::invalid_argument, path + ": is the prefix of a split region (" +
                                                       split_piece_path(path, 0) +
                                                       ", ...): format it again with --split"));
  }
  FormatOptions format;
  format.force = args.force;
  if (args.slots) {
    auto n = parse_id(args.slots->c_str());
    if (!n || *n == 0 || *n > IVSHMFS_MAX_PARTITIONS) {
      return usage_error("--slots '" + *args.slots + "' is not a number from 1 to " +
                         std::to_string(IVSHMFS_MAX_PARTITIONS));
    }
    format.slots = *n;
    format.partitions = std::min(format.partitions, *n);
  }
  if (args.free) {
    if (!args.slots) return usage_error("--free only applies with --slots (a table that can grow)");
    auto parsed = parse_size(*args.free);
    if (!parsed) return usage_error("--free: " + parsed.error().message);
    format.free_bytes = *parsed;
  }
  if (args.partitions) {
    auto id = parse_id(args.partitions->c_str());
    if (!id || (*id == 0 && !args.slots) || *id > IVSHMFS_MAX_PARTITIONS) {
      return usage_error("--partitions '" + *args.partitions + "' is not a number from 1 to " +
                         std::to_string(IVSHMFS_MAX_PARTITIONS));
    }
    format.partitions = *id;
  }
  format.ring = args.ring;
  for (const std::string& spec : args.partition) {
    // ID=SIZE, ID=SIZE,ring or ID=ring
    const auto eq = spec.find('=');
    auto id = parse_id(spec.substr(0, eq).c_str());
    if (eq == std::string::npos || !id) {
      return usage_error("--partition '" + spec + "' is not ID=SIZE, ID=SIZE,ring or ID=ring");
    }
    PartitionLayout want;
    want.id = *id;
    std::string rest = spec.substr(eq + 1);
    if (rest == "ring" || (rest.size() > 5 && rest.ends_with(",ring"))) {
      want.ring = true;
      rest = rest == "ring" ? "" : rest.substr(0, rest.size() - 5);
    }
    if (!rest.empty()) {
      auto parsed = parse_size(rest);
      if (!parsed) return usage_error("--partition '" + spec + "': " + parsed.error().message);
      if (*parsed == 0) return usage_error("--partition '" + spec + "': a partition cannot be empty");
      want.capacity = *parsed;
    } else if (!want.ring) {
      return usage_error("--partition '" + spec + "' gives neither a size nor ring");
    }
    format.layout.push_back(want);
  }
  uint64_t size = 0;
  if (args.size) {
    auto parsed = parse_size(*args.size);
    if (!parsed) return usage_error(parsed.error().message);
    size = *parsed;
  }
  const bool exists = ::access(path.c_str(), F_OK) == 0;
  if (!exists && size == 0) {
    return fail(make_error(Errc::invalid_argument, path + ": no such file; pass --size SIZE to create it"));
  }
  BackendOptions options{true, !exists, size};
  if (!exists && ::isatty(STDERR_FILENO) == 1) options.progress = show_progress;
  auto backend = Backend::open(path, options);
  if (!backend) return fail(backend.error());
  // A file this command created is removed again when formatting fails, so
  // that a retry (with another --size, say) starts from nothing.
  if (size != 0 && (*backend)->size() != size) {
    return fail(make_error(Errc::size_mismatch, path + ": is " + format_size((*backend)->size()) + " but --size says " +
                                                    format_size(size) + " (omit --size to use the existing size)"));
  }
  if (auto r = Region::format(**backend, format); !r) {
    (*backend)->remove_if_created();
    return fail(r.error());
  }
  auto region = Region::open(std::move(backend).value());
  if (!region) return fail(region.error());
  const auto& parts = (*region)->partitions();
  std::string grow;
  if ((*region)->live_table()) {
    const FreeSpace free = (*region)->free_space();
    grow = "; " + std::to_string(free.free_slots) + " free table slots, " + format_size(free.total) + " free";
  }
  if (parts.empty()) {
    std::printf("formatted %s: %s, no partitions%s\n", path.c_str(), format_size((*region)->info().region_size).c_str(),
                grow.c_str());
    return 0;
  }
  const bool uniform = std::all_of(parts.begin(), parts.end(), [&](const PartitionInfo& p) {
    return p.capacity == parts.front().capacity && p.ring == parts.front().ring;
  });
  if (uniform) {
    std::printf("formatted %s: %s, %zu %s of %s each%s\n", path.c_str(),
                format_size((*region)->info().region_size).c_str(), parts.size(),
                parts.front().ring ? "ring partitions" : "partitions", format_size(parts.front().capacity).c_str(),
                grow.c_str());
    return 0;
  }
  std::printf("formatted %s: %s, %zu partitions:", path.c_str(), format_size((*region)->info().region_size).c_str(),
              parts.size());
  for (const PartitionInfo& p : parts) {
    std::printf(" %u=%s%s", p.id, format_size(p.capacity).c_str(), p.ring ? ",ring" : "");
  }
  std::printf("%s\n", grow.c_str());
  return 0;
}

int cmd_add(const Args& args) {
  if (args.positional.size() != 1) return usage_error("add takes one BACKEND");
  if (!args.size) return usage_error("add needs --size SIZE (the new partition's capacity, a multiple of 4K)");
  auto size = parse_size(*args.size);
  if (!size) return usage_error("--size: " + size.error().message);
  NewPartition wanted;
  wanted.capacity = *size;
  wanted.ring = args.ring;
  if (args.id) {
    auto id = parse_id(args.id->c_str());
    if (!id) return usage_error("--id '" + *args.id + "' is not a partition id");
    wanted.id = *id;
  }
  auto region = open_region(args.positional[0], true);
  if (!region) return fail(region.error());
  if ((*region)->split() && args.ring) return usage_error("--ring: the pieces of a split region hold logs");
  auto added = (*region)->add_partition(wanted);
  if (!added) return fail(added.error());
  if ((*region)->split()) {
    const Backend& piece = (*region)->backend(*added);
    std::printf(
        "added partition %u (vm%u): piece %s, %s (capacity %s); attach it to running guests with "
        "'ivshmctl qemu-args --peer K --hotplug %u %s'\n",
        added->id, added->id, piece.path().c_str(), format_size(piece.size()).c_str(),
        format_size(added->capacity).c_str(), added->id, args.positional[0].c_str());
    return 0;
  }
  const FreeSpace free = (*region)->free_space();
  std::printf("added partition %u (vm%u): %s%s at offset %" PRIu64 "; %u free table slots, %s free (largest %s)\n",
              added->id, added->id, format_size(added->capacity).c_str(), added->ring ? " ring" : "",
              added->data_offset, free.free_slots, format_size(free.total).c_str(), format_size(free.largest).c_str());
  return 0;
}

int cmd_remove(const Args& args) {
  if (args.positional.size() != 1) return usage_error("remove takes one BACKEND");
  if (!args.id) return usage_error("remove needs --id N (the partition to remove)");
  auto id = parse_id(args.id->c_str());
  if (!id) return usage_error("--id '" + *args.id + "' is not a partition id");
  auto region = open_region(args.positional[0], true);
  if (!region) return fail(region.error());
  if (auto r = (*region)->remove_partition(*id); !r) return fail(r.error());
  if ((*region)->split()) {
    std::printf(
        "removed partition %u (vm%u): piece %s; unplug it from running guests with "
        "'ivshmctl qemu-args --peer K --unplug %u %s'\n",
        *id, *id, split_piece_path(args.positional[0], *id).c_str(), *id, args.positional[0].c_str());
    return 0;
  }
  const FreeSpace free = (*region)->free_space();
  std::printf("removed partition %u (vm%u); %u free table slots, %s free (largest %s)\n", *id, *id, free.free_slots,
              format_size(free.total).c_str(), format_size(free.largest).c_str());
  return 0;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      continue;
    }
    out += c;
  }
  return out;
}

int cmd_status(const Args& args) {
  if (args.positional.size() != 1) return usage_error("status takes one BACKEND");
  auto region = open_region(args.positional[0], false);
  if (!region) return fail(region.error());
  const Region& r = **region;
  const RegionInfo& info = r.info();
  // A partition whose generation stays odd (an owner stopped in a reset) is
  // shown as such: the table is always printed.
  const FreeSpace free = r.free_space();
  std::vector<PartitionStat> stats;
  std::vector<bool> mid_reset;
  std::vector<bool> known;  // false: stat() gave up on the partition, only id and capacity are known
  for (const auto& p : r.partitions()) {
    auto s = r.stat(p.id);
    if (!s && s.error().code != Errc::busy) return fail(s.error());
    if (!s) {
      PartitionStat blank;
      blank.id = p.id;
      blank.capacity = p.capacity;
      stats.push_back(blank);
    } else {
      stats.push_back(*s);
    }
    known.push_back(s.ok());
    mid_reset.push_back(!s || s->generation % 2 != 0);
  }
  if (args.json) {
    std::printf("{\"backend\":\"%s\",\"kind\":\"%s\",\"version\":%u,\"region_size\":%" PRIu64
                ",\"format_id\":\"%016" PRIx64 "\",\"format_time_ns\":%" PRIu64
                ",\"partition_count\":%u,\"split_pieces\":%u,\"live_table\":%s,\"table_slots\":%u,"
                "\"free_slots\":%u,\"free_bytes\":%" PRIu64 ",\"largest_free\":%" PRIu64 ",\"partitions\":[",
                json_escape(r.path()).c_str(), to_string(r.backends().front()->kind()), info.version, info.region_size,
                info.format_id, info.format_time_ns, info.partition_count, info.split_pieces,
                r.live_table() ? "true" : "false", info.table_slots, free.free_slots, free.total, free.largest);
    for (std::size_t i = 0; i < stats.size(); ++i) {
      const PartitionStat& s = stats[i];
      std::printf(
          "%s{\"id\":%u,\"claimed\":%s,\"alive\":%s,\"owner_pid\":%" PRIu64
          ",\"owner_local\":%s,"
          "\"owner_since_ns\":%" PRIu64 ",\"owner_heartbeat_ns\":%" PRIu64 ",\"length\":%" PRIu64
          ",\"capacity\":%" PRIu64 ",\"generation\":%" PRIu64 ",\"last_write_ns\":%" PRIu64 ",\"free\":%" PRIu64
          ",\"fenced\":%" PRIu64 ",\"head\":%" PRIu64 ",\"base\":%" PRIu64
          ",\"mid_reset\":%s,\"ring\":%s,\"retained_from\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"backend\":\"%s\"}",
          i == 0 ? "" : ",", s.id, s.claimed ? "true" : "false", s.alive ? "true" : "false",
          s.claimed ? s.owner_pid : 0, s.claimed && s.owner_local ? "true" : "false", s.claimed ? s.owner_since_ns : 0,
          s.claimed ? s.owner_heartbeat_ns : 0, s.length, s.capacity, s.generation, s.last_write_ns, s.free, s.fenced,
          s.head, s.base, mid_reset[i] ? "true" : "false", s.ring ? "true" : "false", s.retained_from, s.retained_from,
          json_escape(r.backend(r.partitions()[i]).path()).c_str());
    }
    std::printf("]}\n");
    return 0;
  }
  std::string kind = to_string(r.backends().front()->kind());
  if (r.split()) {
    // Pieces may have been added (ivshmctl add) since the format.
    kind = "split, " + std::to_string(info.partition_count) +
           (info.partition_count <= info.split_pieces
                ? " of " + std::to_string(info.split_pieces) + " " + kind + " pieces"
                : " " + kind + " pieces, " + std::to_string(info.split_pieces) + " formatted together");
  }
  std::printf("region %s (%s): layout v%u, %s, %u partitions, format id %016" PRIx64 ", formatted %s\n",
              r.path().c_str(), kind.c_str(), info.version, format_size(info.region_size).c_str(), info.partition_count,
              info.format_id, iso_time(info.format_time_ns).c_str());
  if (r.live_table()) {
    std::printf("live partition table: %u of %u slots free, %s of data area free (largest extent %s)\n",
                free.free_slots, info.table_slots, format_size(free.total).c_str(), format_size(free.largest).c_str());
  }
  std::printf("%-4s %-22s %-5s %21s %10s  %s\n", "ID", "OWNER", "ALIVE", "LENGTH/CAPACITY", "GENERATION", "LAST WRITE");
  for (std::size_t i = 0; i < stats.size(); ++i) {
    const PartitionStat& s = stats[i];
    if (!known[i]) {
      std::printf("%-4u %-22s %-5s %21s %10s  %s\n", s.id, "?", "?", "mid-reset", "odd", "-");
      continue;
    }
    std::string owner = "-";
    if (s.claimed) owner = "pid " + std::to_string(s.owner_pid) + (s.owner_local ? " (here)" : " (remote)");
    char length[48];
    if (mid_reset[i]) {
      std::snprintf(length, sizeof length, "mid-reset");
    } else {
      std::snprintf(length, sizeof length, "%" PRIu64 "/%" PRIu64 "%s", s.length, s.capacity, s.ring ? "r" : "");
    }
    std::printf("%-4u %-22s %-5s %21s %10" PRIu64 "  %s\n", s.id, owner.c_str(),
                s.claimed ? (s.alive ? "yes" : (s.owner_dead ? "dead" : "stale")) : "-", length, s.generation,
                iso_time(s.last_write_ns).c_str());
  }
  for (std::size_t i = 0; i < stats.size(); ++i) {
    const PartitionStat& s = stats[i];
    if (s.ring && known[i] && !mid_reset[i]) {
      std::printf("partition %u: ring (r): %" PRIu64 " bytes written since the reset, retains [%" PRIu64 ", %" PRIu64
                  "), %" PRIu64 " bytes overwritten\n",
                  s.id, s.length, s.retained_from, s.length, s.retained_from);
    }
  }
  for (const PartitionStat& s : stats) {
    if (s.fenced > 0) {
      std::printf("partition %u: %" PRIu64
                  " bytes fenced off by a takeover (a displaced owner may still write there)\n",
                  s.id, s.fenced);
    }
  }
  for (std::size_t i = 0; i < stats.size(); ++i) {
    if (mid_reset[i]) {
      std::printf(
          "partition %u: a reset stays half done (its owner stopped or died in it); the next claim finishes it\n",
          stats[i].id);
    }
  }
  return 0;
}

int cmd_read(const Args& args) {
  if (args.positional.size() != 2) return usage_error("read takes BACKEND ID");
  auto id = parse_id(args.positional[1].c_str());
  if (!id) return usage_error("'" + args.positional[1] + "' is not a partition id");
  auto region = open_region(args.positional[0], false);
  if (!region) return fail(region.error());
  std::vector<std::byte> buffer(kChunk);
  uint64_t offset = 0;
  uint64_t skipped = 0;
  std::optional<uint64_t> first_generation;
  const PartitionInfo* partition = (*region)->find(*id);
  if (partition != nullptr && partition->ring) {
    // What the ring retains, from its oldest byte.
    auto s = (*region)->snapshot(*id);
    if (!s) return fail(s.error());
    offset = s->retained_from;
  }
  for (;;) {
    uint64_t generation = 0;
    auto n = (*region)->read(*id, offset, buffer, &generation);
    if (!n && n.error().code == Errc::overrun) {
      // The ring's writer lapped this read: go on at its oldest byte, and say so.
      auto s = (*region)->snapshot(*id);
      if (!s) return fail(s.error());
      if (s->retained_from <= offset) return fail(n.error());
      skipped += s->retained_from - offset;
      offset = s->retained_from;
      continue;
    }
    if (!n) return fail(n.error());
    if (first_generation && *first_generation != generation) {
      return fail(make_error(
          Errc::busy, args.positional[0] + ": partition " + args.positional[1] + " was reset while it was being read"));
    }
    first_generation = generation;
    if (*n == 0) break;
    if (std::fwrite(buffer.data(), 1, *n, stdout) != *n) return fail(make_sys_error("stdout"));
    offset += *n;
  }
  if (std::fflush(stdout) != 0) return fail(make_sys_error("stdout"));
  if (skipped > 0) {
    std::fprintf(stderr,
                 "ivshmctl: partition %u: the ring's writer overwrote %" PRIu64
                 " bytes before they were read; they are missing from the output\n",
                 *id, skipped);
  }
  return 0;
}

Result<std::unique_ptr<PartitionWriter>> claim_for_cli(const Args& args, uint32_t id) {
  auto region = open_region(args.positional[0], true, id);
  if (!region) return std::move(region).error();
  ClaimOptions claim;
  claim.force = args.force;
  auto writer = PartitionWriter::claim(std::move(region).value(), id, claim);
  if (!writer && writer.error().code == Errc::claimed) {
    Error e = std::move(writer).error();
    e.message += "; stop it first, or pass --force";
    return e;
  }
  return writer;
}

int cmd_write(const Args& args) {
  if (args.positional.size() != 2) return usage_error("write takes BACKEND ID");
  auto id = parse_id(args.positional[1].c_str());
  if (!id) return usage_error("'" + args.positional[1] + "' is not a partition id");
  auto writer = claim_for_cli(args, *id);
  if (!writer) return fail(writer.error());
  // Standard input is a stream, not one message: a ring takes it in pieces
  // no larger than itself.
  const PartitionInfo& partition = (*writer)->partition();
  std::vector<std::byte> buffer(partition.ring ? std::min<std::size_t>(kChunk, partition.capacity) : kChunk);
  uint64_t total = 0;
  for (;;) {
    const ssize_t got = ::read(STDIN_FILENO, buffer.data(), buffer.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return fail(make_sys_error("stdin"));
    if (got == 0) break;
    std::size_t done = 0;
    while (done < static_cast<std::size_t>(got)) {
      auto n = (*writer)->append(std::span(buffer).subspan(done, static_cast<std::size_t>(got) - done));
      if (!n) {
        Error e = std::move(n).error();
        e.message += " after " + std::to_string(total + done) + " bytes";
        return fail(e);
      }
      done += *n;
    }
    total += done;
  }
  return 0;
}

int cmd_reset(const Args& args) {
  if (args.positional.size() != 2) return usage_error("reset takes BACKEND ID");
  auto id = parse_id(args.positional[1].c_str());
  if (!id) return usage_error("'" + args.positional[1] + "' is not a partition id");
  auto writer = claim_for_cli(args, *id);
  if (!writer) return fail(writer.error());
  if (auto r = (*writer)->reset(); !r) return fail(r.error());
  return 0;
}

// A value inside a QEMU option list: commas are doubled.
std::string qemu_escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

std::string xml_escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Pieces placed on the machine's root bus before bridges are used: the root
// bus has 32 slots, of which the machine's own devices take several.
constexpr std::size_t kRootBusPieces = 16;
// Slots 1..31 of each pci-bridge.
constexpr std::size_t kBridgeSlots = 31;

// QMP commands (one JSON object a line) that attach piece N of a split
// region to VM K's running QEMU, or detach it: the hot-plug form of the
// options below, with the same object and device ids.
int print_hotplug(const Args& args, const Region& r, uint32_t peer) {
  if (args.hotplug && args.unplug) return usage_error("--hotplug and --unplug are one piece at a time");
  if (args.libvirt || args.bridge) return usage_error("--hotplug and --unplug take neither --libvirt nor --bridge");
  if (!r.split()) {
    return fail(make_error(Errc::invalid_argument,
                           r.path() + ": a single-file region is one device, attached at start: --hotplug and "
                                      "--unplug are for the pieces of a split region"));
  }
  const std::string& which = args.hotplug ? *args.hotplug : *args.unplug;
  auto id = parse_id(which.c_str());
  if (!id) return usage_error("'" + which + "' is not a partition id");
  const std::string name = "ivshmfs-vm" + std::to_string(*id);
  if (args.unplug) {
    // The device first; the memory backend once QEMU reports DEVICE_DELETED
    // (the guest released the device).
    std::printf("{\"execute\":\"device_del\",\"arguments\":{\"id\":\"%s-dev\"}}\n", name.c_str());
    std::printf("{\"execute\":\"object-del\",\"arguments\":{\"id\":\"%s\"}}\n", name.c_str());
    return 0;
  }
  const PartitionInfo* p = r.find(*id);
  if (p == nullptr) {
    return fail(make_error(Errc::no_such_partition, r.path() + ": no piece " + split_piece_path(r.path(), *id) +
                                                        " ('ivshmctl add --id " + std::to_string(*id) + " --size S " +
                                                        r.path() + "' creates it)"));
  }
  const Backend& backend = r.backend(*p);
  char real[PATH_MAX];
  const std::string path = ::realpath(backend.path().c_str(), real) != nullptr ? real : backend.path();
  std::printf(
      "{\"execute\":\"object-add\",\"arguments\":{\"qom-type\":\"memory-backend-file\",\"id\":\"%s\","
      "\"mem-path\":\"%s\",\"size\":%zu,\"share\":true%s}}\n",
      name.c_str(), json_escape(path).c_str(), backend.size(), *id == peer ? "" : ",\"readonly\":true");
  std::printf(
      "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"ivshmem-plain\",\"id\":\"%s-dev\","
      "\"memdev\":\"%s\"}}\n",
      name.c_str(), name.c_str());
  return 0;
}

int cmd_qemu_args(const Args& args) {
  if (args.positional.size() != 1) return usage_error("qemu-args takes one BACKEND");
  if (!args.peer) return usage_error("qemu-args needs --peer K (the partition id of the VM)");
  auto peer = parse_id(args.peer->c_str());
  if (!peer) return usage_error("--peer '" + *args.peer + "' is not a partition id");
  auto region = open_region(args.positional[0], false);
  if (!region) return fail(region.error());
  const Region& r = **region;
  if (r.find(*peer) == nullptr) {
    return fail(make_error(Errc::no_such_partition, r.path() + ": no partition " + std::to_string(*peer) +
                                                        " (the region has " + std::to_string(r.info().partition_count) +
                                                        ")"));
  }
  if (args.hotplug || args.unplug) return print_hotplug(args, r, *peer);
  // A split region's VMs get the pieces there are now (pieces come and go:
  // 'ivshmctl add', --hotplug).
  std::vector<std::string> words;
  const std::size_t count = r.partitions().size();
  const bool bridged = args.bridge || (r.split() && count > kRootBusPieces);
  const std::size_t bridges = bridged ? (count + kBridgeSlots - 1) / kBridgeSlots : 0;
  for (std::size_t b = 0; b < bridges; ++b) {
    words.emplace_back("-device");
    words.push_back("pci-bridge,id=ivshmfs-bridge" + std::to_string(b) + ",chassis_nr=" + std::to_string(b + 1));
  }
  for (std::size_t i = 0; i < count; ++i) {
    const PartitionInfo& p = r.partitions()[i];
    const Backend& backend = r.backend(p);
    if (backend.kind() != BackendKind::host_file) {
      return fail(make_error(Errc::invalid_argument, backend.path() + ": is not a host file: qemu-args describes " +
                                                         "the host's files of a region"));
    }
    char real[PATH_MAX];
    const std::string path = ::realpath(backend.path().c_str(), real) != nullptr ? real : backend.path();
    const std::string name = r.split() ? "ivshmfs-vm" + std::to_string(p.id) : "ivshmfs";
    // A single-file region is shared read-write by every VM.
    const bool own = !r.split() || p.id == *peer;
    words.emplace_back("-object");
    words.push_back("memory-backend-file,id=" + name + ",mem-path=" + qemu_escape(path) +
                    ",size=" + std::to_string(backend.size()) + ",share=on" + (own ? "" : ",readonly=on"));
    std::string device = "ivshmem-plain,id=" + name + "-dev,memdev=" + name;
    if (bridged) {
      char slot[16];  // QEMU reads a PCI address as hexadecimal slot[.function]
      std::snprintf(slot, sizeof slot, "0x%zx", i % kBridgeSlots + 1);
      device += ",bus=ivshmfs-bridge" + std::to_string(i / kBridgeSlots) + ",addr=" + slot;
    }
    words.emplace_back("-device");
    words.push_back(device);
    if (!r.split()) break;
  }
  if (args.libvirt) {
    std::printf(
        "<!-- ivshmfs region %s, VM %u: inside <domain type='kvm' "
        "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'> -->\n<qemu:commandline>\n",
        xml_escape(r.path()).c_str(), *peer);
    for (const std::string& w : words) std::printf("  <qemu:arg value='%s'/>\n", xml_escape(w).c_str());
    std::printf("</qemu:commandline>\n");
    return 0;
  }
  for (std::size_t i = 0; i + 1 < words.size(); i += 2) std::printf("%s %s\n", words[i].c_str(), words[i + 1].c_str());
  return 0;
}

struct Command {
  std::vector<std::string> options;
  std::size_t operands;  // BACKEND plus the rest
  const char* help;
  std::function<int(const Args&)> run;
};

const std::map<std::string, Command>& commands() {
  static const std::map<std::string, Command> table{
      {"format",
       {{"size", "partitions", "partition", "ring", "force", "split", "slots", "free"},
        1,
        "Usage: ivshmctl format [--size SIZE] [--partitions N] [--partition ID=[SIZE][,ring]]...\n"
        "                       [--ring] [--slots N [--free SIZE]] [--force] [BACKEND]\n"
        "       ivshmctl format --split --size SIZE [--partitions N] [--force] PREFIX\n\n"
        "Lay out a fresh region: a new format id, N empty, unclaimed partitions. Partitions\n"
        "without a --partition size share what the sized ones leave, equally.\n\n"
        "  --size SIZE       create a missing host file of SIZE bytes (K, M, G, T suffixes);\n"
        "                    for an existing backend it must match its size\n"
        "  --partitions N    number of partitions, 1..64 (default 4); ids are 0..N-1\n"
        "  --partition ID=SIZE[,ring]\n"
        "                    give partition ID its own size (a multiple of 4 KiB), and\n"
        "                    with ,ring make it a ring; ID=ring makes it a ring of the\n"
        "                    shared size. Once per ID; repeat for others\n"
        "  --ring            make every partition a ring: it keeps its newest SIZE bytes,\n"
        "                    and a write never fails for lack of room (one larger than\n"
        "                    the ring fails with EFBIG)\n"
        "  --slots N         a live partition table of N slots (N >= --partitions, at most\n"
        "                    64; --partitions may then be 0): peers may add partitions\n"
        "                    later ('ivshmctl add', 'ivshmfs -o id=auto') and remove them\n"
        "                    ('ivshmctl remove'), while the region is mounted. Partitions\n"
        "                    without a size then get the share they would get if every\n"
        "                    slot held one; the rest of the data area stays free. Peers of\n"
        "                    ivshmfs versions without live tables refuse such a region\n"
        "  --free SIZE       with --slots: keep SIZE bytes free instead (rounded to pages;\n"
        "                    the shares round down, so a little more may stay free); the\n"
        "                    partitions without a size share the rest\n"
        "  --force           format even if BACKEND already holds data (destroys it)\n"
        "  --split           a split region: one file per partition, PREFIX.vm0 .. PREFIX.vm{N-1},\n"
        "                    each SIZE bytes (a power of two: each becomes a PCI BAR) and holding\n"
        "                    one partition, so each VM can be given write access to its own only\n"
        "                    (see 'ivshmctl qemu-args'); with --force, pieces numbered N or more\n"
        "                    left by an older format are removed. Not with --partition or --ring\n",
        cmd_format}},
      {"status",
       {{"json"},
        1,
        "Usage: ivshmctl status [--json] [BACKEND]\n\n"
        "Show the region's layout and, per partition: id, owner, whether the owner is alive\n"
        "(yes: heartbeating; stale: silent; dead: its process is gone from this system and\n"
        "PID namespace), committed length and capacity, generation (resets), last write.\n"
        "A ring partition is marked r after its capacity and named below the table with\n"
        "the bytes written since its reset, the range it retains and the bytes overwritten\n"
        "(\"ring\", \"retained_from\" and \"lost\" in JSON).\n"
        "A partition whose reset never finished (its owner stopped or died in it) is named\n"
        "below the table (\"mid_reset\": true in JSON); the next claim finishes the reset.\n"
        "So is a range a takeover fenced off (\"fenced\" bytes in JSON).\n\n"
        "  --json            one JSON object instead of the table\n",
        cmd_status}},
      {"add",
       {{"id", "size", "ring"},
        1,
        "Usage: ivshmctl add [--id N] --size SIZE [--ring] [BACKEND]\n\n"
        "Add a partition to a region formatted with a live table (format --slots), also\n"
        "while peers have it mounted: every mounted peer shows the new file vmN at its\n"
        "next lookup, listing or .status read. Its data area is the first free extent\n"
        "(lowest offset) that holds SIZE; its table slot the lowest free one. It starts\n"
        "empty and unclaimed.\n"
        "Of a split region (BACKEND is its PREFIX): create the piece PREFIX.vmN of SIZE\n"
        "bytes (a power of two: a PCI BAR), with the region's identity; host peers take it\n"
        "in as above, guests once it is hot-plugged ('qemu-args --hotplug N').\n\n"
        "  --id N            the new partition's id (default: the lowest unused id)\n"
        "  --size SIZE       its capacity, a multiple of 4 KiB (K, M, G suffixes); of a\n"
        "                    split region, the piece's size, a power of two of at least 8K\n"
        "  --ring            make it a ring partition (not in a split region)\n",
        cmd_add}},
      {"remove",
       {{"id"},
        1,
        "Usage: ivshmctl remove --id N [BACKEND]\n\n"
        "Remove partition N from a region with a live table: its file disappears from every\n"
        "mount (open descriptors of it fail with EIO), and its table slot and data area may\n"
        "be used by the next 'add'. Refused while a live owner holds it (unmount it first);\n"
        "a stale or dead owner's claim does not stop it. Its bytes are lost.\n"
        "Of a split region: remove the piece file PREFIX.vmN (its memory is freed once no\n"
        "running peer maps it: unplug it from guests with 'qemu-args --unplug N').\n\n"
        "  --id N            the partition to remove\n",
        cmd_remove}},
      {"read",
       {{},
        2,
        "Usage: ivshmctl read [BACKEND] ID\n\n"
        "Write the committed bytes of partition ID to standard output, unchanged. Of a ring,\n"
        "what it retains, oldest first; should its writer overwrite bytes before they are\n"
        "read, the output goes on at the oldest retained byte and a warning on standard\n"
        "error says how many bytes are missing.\n",
        cmd_read}},
      {"write",
       {{"force"},
        2,
        "Usage: ivshmctl write [--force] [BACKEND] ID\n\n"
        "Append standard input to partition ID. Refused while a live owner (e.g. a mounted\n"
        "ivshmfs daemon) holds the partition.\n\n"
        "  --force           take the partition from its live owner, which stops writing\n",
        cmd_write}},
      {"reset",
       {{"force"},
        2,
        "Usage: ivshmctl reset [--force] [BACKEND] ID\n\n"
        "Truncate partition ID to zero bytes; readers see the new generation.\n\n"
        "  --force           take the partition from its live owner, which stops writing\n",
        cmd_reset}},
      {"qemu-args",
       {{"peer", "libvirt", "bridge", "hotplug", "unplug"},
        1,
        "Usage: ivshmctl qemu-args [--libvirt] [--bridge] [--hotplug N | --unplug N] --peer K BACKEND\n\n"
        "Print the QEMU options that attach the region to VM K: for each piece of a split\n"
        "region '-object memory-backend-file,...,share=on' and '-device ivshmem-plain,...',\n"
        "read-write for VM K's own piece and readonly=on for every other piece, so QEMU\n"
        "discards the VM's writes to its peers' partitions; for a single-file region the one\n"
        "read-write device every VM shares. One option and its value per line, ready for\n"
        "$(ivshmctl qemu-args ...) when the paths hold no spaces.\n\n"
        "  --peer K          the VM's partition id\n"
        "  --libvirt         print a <qemu:commandline> block for the libvirt domain XML instead\n"
        "                    (libvirt's own <shmem> element has no read-only mode)\n"
        "  --bridge          put the devices behind pci-bridge devices (31 per bridge);\n"
        "                    done anyway for more than 16 pieces\n"
        "  --hotplug N       instead, print the QMP commands (one JSON object a line) that\n"
        "                    attach piece N of a split region to VM K while it runs:\n"
        "                    object-add of its memory-backend-file (readonly unless N is K)\n"
        "                    and device_add of its ivshmem-plain, on the machine's root bus\n"
        "                    (i440fx: ACPI hot-plug; q35 needs a free pcie-root-port, add\n"
        "                    \"bus\":\"ID\" to device_add)\n"
        "  --unplug N        instead, print the QMP commands that detach piece N: device_del,\n"
        "                    then object-del once QEMU reported DEVICE_DELETED\n",
        cmd_qemu_args}},
  };
  return table;
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything is opened: a region must never become stdin (read into
  // a partition) or stdout/stderr (output written into the region).
  if (auto r = ensure_standard_descriptors(); !r) return 1;
  // Messages go to stderr: stdout carries a partition's bytes (read) or JSON.
  auto logger = spdlog::stderr_logger_mt("ivshmctl");
  logger->set_pattern("ivshmctl: %v");
  logger->set_level(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
  if (argc < 2) return usage_error("no command given");
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (name == "--version") {
    std::printf("ivshmctl %s (layout version %u)\n", IVSHMFS_VERSION, IVSHMFS_LAYOUT_VERSION);
    return 0;
  }
  auto it = commands().find(name);
  if (it == commands().end()) return usage_error("unknown command '" + name + "'");
  std::string error;
  auto args = parse_args(argc - 1, argv + 1, it->second.options, &error);
  if (!args) return usage_error(error);
  if (args->help) {
    std::fputs(it->second.help, stdout);
    return 0;
  }
  // Inside a guest BACKEND may be left out: the first ivshmem device is used.
  if (args->positional.size() + 1 == it->second.operands) {
    auto found = find_default_backend();
    if (!found) {
      return usage_error("no BACKEND given and no ivshmem device found (load the ivshm driver, or name a file)");
    }
    args->positional.insert(args->positional.begin(), *found);
  }
  return it->second.run(*args);
}
