// SPDX-License-Identifier: MIT
#include "status.hpp"

#include <spdlog/fmt/fmt.h>

#include "ivshmfs/backend.hpp"

namespace ivshmfs::fs {

std::string partition_file_name(uint32_t id) { return "vm" + std::to_string(id); }

namespace {

// One field must stay one awk field: no blanks inside a value.
std::string field(std::string value) {
  for (char& c : value) {
    if (c == ' ' || c == '\t' || c == '\n') c = '_';
  }
  return value;
}

}  // namespace

std::string format_status(const Region& region, std::optional<uint32_t> self_id, bool stale,
                          const std::string& wakeups) {
  const RegionInfo& info = region.info();
  std::string out = fmt::format(
      "region backend={} kind={} size={} version={} format_id={:#018x} format_time_ns={} partitions={} self={} "
      "state={} split_pieces={}\n",
      field(region.path()), field(to_string(region.backends().front()->kind())), info.region_size, info.version,
      info.format_id, info.format_time_ns, info.partition_count,
      self_id ? std::to_string(*self_id) : std::string("none"), stale ? "reformatted" : "ok", info.split_pieces);
  if (stale) return out + wakeups;  // the partition table we hold no longer describes the region
  for (const PartitionInfo& p : region.partitions()) {
    auto s = region.stat(p.id);
    if (!s) {
      // busy: the generation stays odd, a reset its owner never finished.
      out += fmt::format("partition id={} file={} mid_reset={} error={}\n", p.id, partition_file_name(p.id),
                         s.error().code == Errc::busy ? 1 : 0, to_string(s.error().code));
      continue;
    }
    out += fmt::format(
        "partition id={} file={} self={} claimed={} alive={} owner_pid={} owner_local={} owner_since_ns={} "
        "owner_heartbeat_ns={} length={} capacity={} free={} generation={} last_write_ns={} fenced={} mid_reset={} "
        "ring={} retained_from={} lost={}\n",
        p.id, partition_file_name(p.id), self_id == p.id ? 1 : 0, s->claimed ? 1 : 0, s->alive ? 1 : 0, s->owner_pid,
        s->owner_local ? 1 : 0, s->owner_since_ns, s->owner_heartbeat_ns, s->length, s->capacity, s->free,
        s->generation, s->last_write_ns, s->fenced, s->mid_reset ? 1 : 0, s->ring ? 1 : 0, s->retained_from,
        s->retained_from);
  }
  return out + wakeups;
}

std::vector<std::pair<std::string, std::string>> partition_xattrs(const PartitionStat& s, bool self, uint64_t skipped) {
  const std::string p = kXattrPrefix;
  return {
      {p + "ring", s.ring ? "1" : "0"},
      {p + "retained_from", std::to_string(s.retained_from)},
      {p + "lost", std::to_string(s.retained_from)},
      {p + "skipped", std::to_string(skipped)},
      {p + "id", std::to_string(s.id)},
      {p + "self", self ? "1" : "0"},
      {p + "length", std::to_string(s.length)},
      {p + "capacity", std::to_string(s.capacity)},
      {p + "free", std::to_string(s.free)},
      {p + "generation", std::to_string(s.generation)},
      {p + "last_write_ns", std::to_string(s.last_write_ns)},
      {p + "claimed", s.claimed ? "1" : "0"},
      {p + "alive", s.alive ? "1" : "0"},
      {p + "owner_pid", std::to_string(s.owner_pid)},
      {p + "owner_local", s.owner_local ? "1" : "0"},
      {p + "owner_since_ns", std::to_string(s.owner_since_ns)},
      {p + "owner_heartbeat_ns", std::to_string(s.owner_heartbeat_ns)},
  };
}

}  // namespace ivshmfs::fs
