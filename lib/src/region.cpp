// SPDX-License-Identifier: MIT
#include "ivshmfs/region.hpp"

#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "ivshmfs/identity.hpp"
#include "shared.hpp"

namespace ivshmfs {

using detail::load_acquire;
using detail::load_relaxed;
using detail::store_relaxed;
using detail::store_release;

namespace detail {
uint64_t random_nonzero() noexcept {
  uint64_t value = 0;
  while (value == 0) {
    if (getrandom(&value, sizeof value, 0) != static_cast<ssize_t>(sizeof value)) {
      // getrandom cannot fail for 8 bytes once the pool is ready; fall back anyway.
      std::random_device rd;
      value = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ wall_clock_ns();
    }
  }
  return value;
}
}  // namespace detail

uint64_t wall_clock_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t local_host_id() noexcept {
  static const uint64_t id = [] {
    std::string boot_id;
    std::ifstream("/proc/sys/kernel/random/boot_id") >> boot_id;
    uint64_t hash = 1469598103934665603ULL;  // FNV-1a
    for (unsigned char c : boot_id) hash = (hash ^ c) * 1099511628211ULL;
    return hash == 0 ? 1 : hash;
  }();
  return id;
}

namespace {

constexpr uint64_t round_up(uint64_t value, uint64_t align) { return (value + align - 1) / align * align; }

// Sum that reports overflow instead of wrapping: hostile fields must not wrap
// an offset back inside the mapping.
bool add_overflows(uint64_t a, uint64_t b, uint64_t* sum) { return __builtin_add_overflow(a, b, sum); }

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

int differing_bytes(uint64_t a, uint64_t b) {
  int n = 0;
  for (uint64_t x = a ^ b; x != 0; x >>= 8) n += (x & 0xff) != 0 ? 1 : 0;
  return n;
}

// The bytes a format writes, for the largest table: header, partition
// entries and control blocks, up to the first data page.
constexpr uint64_t kMetadataSpan = round_up(
    round_up(sizeof(ivshmfs_header) + IVSHMFS_MAX_PARTITIONS * sizeof(ivshmfs_partition_entry), IVSHMFS_CONTROL_ALIGN) +
        IVSHMFS_MAX_PARTITIONS * sizeof(ivshmfs_control),
    IVSHMFS_PAGE_SIZE);

// The offset of the first byte set in the metadata area, nullopt when it is
// blank (all zero, as a new sparse file or QEMU's fresh backend is): only a
// blank region may be formatted without being asked to.
std::optional<uint64_t> first_nonzero_metadata(std::span<const std::byte> bytes) {
  const std::size_t n = std::min<std::size_t>(bytes.size(), kMetadataSpan);
  for (std::size_t i = 0; i < n; ++i) {
    if (bytes[i] != std::byte{0}) return i;
  }
  return std::nullopt;
}

// The capacity and ring flag of every partition (index = id): the sizes asked
// for, and an equal share of the rest for the others.
Result<std::vector<PartitionLayout>> plan_partitions(const std::string& path, uint64_t size, uint64_t data_offset,
                                                     const FormatOptions& options) {
  const uint32_t count = options.partitions;
  std::vector<PartitionLayout> plan(count);
  std::vector<bool> given(count, false);
  for (uint32_t i = 0; i < count; ++i) plan[i] = PartitionLayout{i, 0, options.ring};
  uint64_t sized = 0;
  for (const PartitionLayout& want : options.layout) {
    const std::string what = "partition " + std::to_string(want.id) + ": ";
    if (want.id >= count) {
      return make_error(Errc::invalid_argument, what + "no such partition (the region gets " + std::to_string(count) +
                                                    ", ids 0.." + std::to_string(count - 1) + ")");
    }
    if (given[want.id]) return make_error(Errc::invalid_argument, what + "given more than once");
    given[want.id] = true;
    if (want.capacity != 0 && (want.capacity % IVSHMFS_PAGE_SIZE != 0 || want.capacity < IVSHMFS_MIN_CAPACITY)) {
      return make_error(Errc::invalid_argument, what + "size " + std::to_string(want.capacity) +
                                                    " is not a positive multiple of the page size (" +
                                                    std::to_string(IVSHMFS_PAGE_SIZE) + " bytes)");
    }
    plan[want.id].capacity = want.capacity;
    plan[want.id].ring = want.ring || options.ring;
    if (add_overflows(sized, want.capacity, &sized)) sized = UINT64_MAX;
  }
  const uint64_t room = size > data_offset ? size - data_offset : 0;
  const auto unsized = static_cast<uint64_t>(
      std::count_if(plan.begin(), plan.end(), [](const PartitionLayout& p) { return p.capacity == 0; }));
  const uint64_t need =
      sized > UINT64_MAX - unsized * IVSHMFS_MIN_CAPACITY ? UINT64_MAX : sized + unsized * IVSHMFS_MIN_CAPACITY;
  if (need > room) {
    std::string msg = path + ": " + format_size(size) + " is too small for " + std::to_string(count) + " partitions";
    if (sized > 0) msg += " of which " + format_size(std::min(sized, UINT64_MAX - 1)) + " are sized";
    return make_error(Errc::region_too_small, msg + " (need at least " +
                                                  (need > UINT64_MAX - data_offset ? std::string("more than 2^64 bytes")
                                                                                   : format_size(data_offset + need)) +
                                                  ")");
  }
  if (unsized > 0) {
    const uint64_t share = (room - sized) / unsized / IVSHMFS_PAGE_SIZE * IVSHMFS_PAGE_SIZE;
    for (PartitionLayout& p : plan) {
      if (p.capacity == 0) p.capacity = share;
    }
  }
  return plan;
}

}  // namespace

Result<void> Region::format(Backend& backend, const FormatOptions& options) {
  const std::string& path = backend.path();
  if (!backend.writable()) return make_error(Errc::read_only, path + ": opened read-only, cannot format");
  const uint32_t count = options.partitions;
  if (count == 0 || count > IVSHMFS_MAX_PARTITIONS) {
    return make_error(Errc::invalid_argument, "partition count " + std::to_string(count) + " is out of range 1.." +
                                                  std::to_string(IVSHMFS_MAX_PARTITIONS));
  }
  const uint64_t size = backend.size();
  const uint64_t control_offset =
      round_up(sizeof(ivshmfs_header) + count * sizeof(ivshmfs_partition_entry), IVSHMFS_CONTROL_ALIGN);
  const uint64_t data_offset = round_up(control_offset + count * sizeof(ivshmfs_control), IVSHMFS_PAGE_SIZE);
  auto plan = plan_partitions(path, size, data_offset, options);
  if (!plan) return std::move(plan).error();

  auto* header = reinterpret_cast<ivshmfs_header*>(backend.bytes().data());
  const uint64_t magic = load_acquire(header->magic);
  if (magic != 0 && !options.force) {
    return make_error(Errc::already_formatted,
                      path + ": already holds data (magic " + hex(magic) + "); pass --force to format it anew");
  }
  if (!options.force) {
    if (auto set = first_nonzero_metadata(backend.bytes())) {
      return make_error(Errc::already_formatted, path +
                                                     ": holds no ivshmfs magic, but its header area is not blank "
                                                     "(byte " +
                                                     std::to_string(*set) +
                                                     " is set): it may be a damaged region with peers' data; "
                                                     "pass --force to format it anew");
    }
  }

  // Peers must never see a half-written header: clear the magic first, publish it last.
  store_release(header->magic, 0);
  std::memset(backend.bytes().data() + sizeof(uint64_t), 0, data_offset - sizeof(uint64_t));
  header->version = IVSHMFS_LAYOUT_VERSION;
  header->header_size = sizeof(ivshmfs_header);
  header->region_size = size;
  store_relaxed(header->format_id, detail::random_nonzero());
  header->format_time_ns = wall_clock_ns();
  header->partition_count = count;
  header->page_size = IVSHMFS_PAGE_SIZE;
  header->control_offset = control_offset;
  header->data_offset = data_offset;
  header->features = 0;
  auto* table = reinterpret_cast<ivshmfs_partition_entry*>(backend.bytes().data() + sizeof(ivshmfs_header));
  uint64_t next = data_offset;
  for (uint32_t i = 0; i < count; ++i) {
    const PartitionLayout& want = (*plan)[i];
    table[i].id = i;
    table[i].flags = want.ring ? IVSHMFS_PARTITION_RING : 0;
    if (want.ring) header->features |= IVSHMFS_FEATURE_RING;
    table[i].control_offset = control_offset + uint64_t{i} * sizeof(ivshmfs_control);
    table[i].data_offset = next;
    table[i].capacity = want.capacity;
    next += want.capacity;
  }
  store_release(header->magic, IVSHMFS_MAGIC);
  return {};
}

Region::Region(std::unique_ptr<Backend> backend) : backend_(std::move(backend)), base_(backend_->bytes().data()) {}
Region::~Region() = default;

Result<std::shared_ptr<Region>> Region::open(std::unique_ptr<Backend> backend) {
  if (!backend) return make_error(Errc::invalid_argument, "no backend");
  const std::string path = backend->path();
  const std::span<std::byte> bytes = backend->bytes();
  const uint64_t size = bytes.size();
  // The smallest valid region is one page of metadata and one data page:
  // anything smaller cannot hold the layout, whatever its first bytes say.
  constexpr uint64_t kMinRegionSize = IVSHMFS_PAGE_SIZE + IVSHMFS_MIN_CAPACITY;
  if (size < kMinRegionSize) {
    return make_error(Errc::region_too_small, path + ": " + std::to_string(size) +
                                                  " bytes cannot hold an ivshmfs region (at least " +
                                                  std::to_string(kMinRegionSize) + " bytes)");
  }
  // One private copy; nothing below reads the shared header again.
  ivshmfs_header h{};
  h.magic = load_acquire(reinterpret_cast<ivshmfs_header*>(bytes.data())->magic);
  std::memcpy(reinterpret_cast<std::byte*>(&h) + sizeof h.magic, bytes.data() + sizeof h.magic,
              sizeof h - sizeof h.magic);

  auto corrupt = [&](const std::string& what) {
    return make_error(Errc::corrupt_header, path + ": corrupt header: " + what);
  };
  if (h.magic == 0)
    return make_error(Errc::not_formatted, path + ": not formatted (run 'ivshmctl format " + path + "')");
  if (h.magic != IVSHMFS_MAGIC && differing_bytes(h.magic, IVSHMFS_MAGIC) <= 2) {
    // Close to ours: a damaged ivshmfs region, not some other file.
    return make_error(Errc::bad_magic, path + ": corrupt header: magic " + hex(h.magic) + " differs from " +
                                           hex(IVSHMFS_MAGIC) + " in " +
                                           std::to_string(differing_bytes(h.magic, IVSHMFS_MAGIC)) +
                                           " byte(s): a damaged ivshmfs region");
  }
  if (h.magic != IVSHMFS_MAGIC) {
    return make_error(Errc::bad_magic, path + ": bad magic " + hex(h.magic) + " (expected " + hex(IVSHMFS_MAGIC) +
                                           "): not an ivshmfs region");
  }
  if (h.version == 1) {
    return make_error(Errc::unsupported_version,
                      path +
                          ": layout version 1 (written by an older ivshmfs) is not supported: this build reads "
                          "version " +
                          std::to_string(IVSHMFS_LAYOUT_VERSION) + "; 'ivshmctl format --force " + path +
                          "' formats it anew, which destroys its contents");
  }
  if (h.version != IVSHMFS_LAYOUT_VERSION) {
    return make_error(Errc::unsupported_version, path + ": layout version " + std::to_string(h.version) +
                                                     " is not supported (this build reads version " +
                                                     std::to_string(IVSHMFS_LAYOUT_VERSION) + ")");
  }
  if (h.header_size != sizeof(ivshmfs_header))
    return corrupt("header_size " + std::to_string(h.header_size) + " is not " + std::to_string(sizeof h));
  if ((h.features & ~IVSHMFS_FEATURES_KNOWN) != 0) {
    return make_error(Errc::unsupported_version, path + ": the region uses feature bits " +
                                                     hex(h.features & ~IVSHMFS_FEATURES_KNOWN) +
                                                     " that this build does not know (it knows " +
                                                     hex(IVSHMFS_FEATURES_KNOWN) + "): a newer ivshmfs formatted it");
  }
  if ((h.features & IVSHMFS_FEATURE_SPLIT) == 0 && h.split_pieces != 0)
    return corrupt("split_pieces is " + std::to_string(h.split_pieces) + " in a region that is not split");
  if (h.reserved32 != 0) return corrupt("reserved32 is " + hex(h.reserved32) + ", not 0");
  for (std::size_t i = 0; i < std::size(h.reserved); ++i) {
    if (h.reserved[i] != 0)
      return corrupt("reserved word " + std::to_string(i) + " is " + hex(h.reserved[i]) + ", not 0");
  }
  if (h.region_size != size) {
    return make_error(Errc::size_mismatch, path + ": header says the region is " + std::to_string(h.region_size) +
                                               " bytes but the mapping is " + std::to_string(size));
  }
  if (h.format_id == 0) return corrupt("format_id is zero");
  if (h.partition_count == 0 || h.partition_count > IVSHMFS_MAX_PARTITIONS) {
    return corrupt("partition_count " + std::to_string(h.partition_count) + " is out of range 1.." +
                   std::to_string(IVSHMFS_MAX_PARTITIONS));
  }
  if (h.page_size != IVSHMFS_PAGE_SIZE) return corrupt("page_size " + std::to_string(h.page_size) + " is not 4096");
  const uint64_t count = h.partition_count;
  const uint64_t table_end = sizeof(ivshmfs_header) + count * sizeof(ivshmfs_partition_entry);
  uint64_t controls_end = 0;
  if (h.control_offset % IVSHMFS_CONTROL_ALIGN != 0 || h.control_offset < table_end ||
      add_overflows(h.control_offset, count * sizeof(ivshmfs_control), &controls_end)) {
    return corrupt("control_offset " + hex(h.control_offset) + " is misaligned or overlaps the partition table");
  }
  if (h.data_offset % IVSHMFS_PAGE_SIZE != 0 || h.data_offset < controls_end || h.data_offset > size) {
    return corrupt("data_offset " + hex(h.data_offset) +
                   " is misaligned, overlaps the control blocks or lies past the end");
  }

  std::vector<ivshmfs_partition_entry> table(count);
  std::memcpy(table.data(), bytes.data() + sizeof(ivshmfs_header), count * sizeof(ivshmfs_partition_entry));

  auto region = std::shared_ptr<Region>(new Region(std::move(backend)));
  region->info_ =
      RegionInfo{h.version, h.region_size, h.format_id, h.format_time_ns, h.partition_count, h.data_offset, h.features};
  region->index_by_id_.fill(-1);
  for (uint32_t i = 0; i < count; ++i) {
    const ivshmfs_partition_entry& e = table[i];
    auto bad = [&](const std::string& what) {
      return make_error(Errc::corrupt_partition_table,
                        path + ": corrupt partition table: entry " + std::to_string(i) + ": " + what);
    };
    if (e.id >= IVSHMFS_MAX_PARTITIONS) return bad("id " + std::to_string(e.id) + " is out of range");
    if (region->index_by_id_[e.id] >= 0) return bad("id " + std::to_string(e.id) + " is used twice");
    region->index_by_id_[e.id] = static_cast<int16_t>(i);
    if ((e.flags & ~IVSHMFS_PARTITION_RING) != 0) return bad("unknown flags " + hex(e.flags));
    const bool ring = (e.flags & IVSHMFS_PARTITION_RING) != 0;
    if (ring && (h.features & IVSHMFS_FEATURE_RING) == 0)
      return bad("flag ring (" + hex(e.flags) + ") without the ring feature bit in the header");
    if (e.control_offset != h.control_offset + uint64_t{i} * sizeof(ivshmfs_control)) {
      return bad("control_offset " + hex(e.control_offset) + " is not control block " + std::to_string(i));
    }
    uint64_t end = 0;
    if (e.data_offset % IVSHMFS_PAGE_SIZE != 0 || e.data_offset < h.data_offset) {
      return bad("data_offset " + hex(e.data_offset) + " is misaligned or inside the metadata");
    }
    if (e.capacity < IVSHMFS_MIN_CAPACITY || e.capacity % IVSHMFS_PAGE_SIZE != 0) {
      return bad("capacity " + std::to_string(e.capacity) + " is not a positive multiple of the page size");
    }
    if (add_overflows(e.data_offset, e.capacity, &end) || end > size) {
      return bad("data area " + hex(e.data_offset) + "+" + hex(e.capacity) + " lies past the end of the region");
    }
    region->partitions_.push_back(PartitionInfo{e.id, i, e.control_offset, e.data_offset, e.capacity, ring});
  }
  if ((h.features & IVSHMFS_FEATURE_RING) != 0 && std::none_of(region->partitions_.begin(), region->partitions_.end(),
                                                               [](const PartitionInfo& p) { return p.ring; })) {
    return corrupt("feature bit ring is set but no partition is a ring");
  }
  std::vector<PartitionInfo> by_offset = region->partitions_;
  std::sort(by_offset.begin(), by_offset.end(),
            [](const PartitionInfo& a, const PartitionInfo& b) { return a.data_offset < b.data_offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i - 1].data_offset + by_offset[i - 1].capacity > by_offset[i].data_offset) {
      return make_error(Errc::corrupt_partition_table, path + ": corrupt partition table: data areas of partitions " +
                                                           std::to_string(by_offset[i - 1].id) + " and " +
                                                           std::to_string(by_offset[i].id) + " overlap");
    }
  }
  return region;
}

Result<std::shared_ptr<Region>> Region::open_path(std::string_view path, const RegionOpenOptions& options) {
  BackendOptions backend_options{options.writable || options.create, options.create, options.create_size};
  backend_options.progress = options.progress;
  auto backend = Backend::open(path, backend_options);
  if (!backend) return std::move(backend).error();
  if (options.create && (*backend)->size() >= sizeof(ivshmfs_header) &&
      load_acquire(reinterpret_cast<ivshmfs_header*>((*backend)->bytes().data())->magic) == 0) {
    // Only a blank region is formatted: one that merely lost its magic may
    // hold peers' data, and anything else is opened (and validated) as it is.
    if (auto set = first_nonzero_metadata((*backend)->bytes())) {
      return make_error(Errc::not_formatted,
                        (*backend)->path() + ": holds no ivshmfs magic, but its header area is not blank (byte " +
                            std::to_string(*set) +
                            " is set): not formatting it, it may be a damaged region with peers' data; inspect it, "
                            "or wipe it with 'ivshmctl format --force " +
                            (*backend)->path() + "'");
    }
    FormatOptions format_options;
    format_options.partitions = options.create_partitions;
    if (auto r = format(**backend, format_options); !r) {
      (*backend)->remove_if_created();
      return std::move(r).error();
    }
    spdlog::info("{}: {} and formatted: {}, {} partitions", (*backend)->path(),
                 (*backend)->created() ? "created" : "was blank", format_size((*backend)->size()),
                 format_options.partitions);
    if (!options.writable) {
      // Formatting needed write access; the caller asked for a read-only mapping.
      backend->reset();
      backend = Backend::open(path, BackendOptions{false, false, 0});
      if (!backend) return std::move(backend).error();
    }
  }
  return open(std::move(backend).value());
}

const PartitionInfo* Region::find(uint32_t id) const noexcept {
  if (id >= index_by_id_.size() || index_by_id_[id] < 0) return nullptr;
  return &partitions_[static_cast<std::size_t>(index_by_id_[id])];
}

ivshmfs_control* Region::control(const PartitionInfo& p) const noexcept {
  return reinterpret_cast<ivshmfs_control*>(base_ + p.control_offset);
}

std::byte* Region::data(const PartitionInfo& p) const noexcept { return base_ + p.data_offset; }

Result<void> Region::check_format() const {
  auto* header = reinterpret_cast<ivshmfs_header*>(base_);
  const uint64_t magic = load_acquire(header->magic);
  const uint64_t format_id = load_acquire(header->format_id);
  if (backend_->mapping_lost()) return backend_->loss_error();
  if (format_id != info_.format_id || magic == 0) {  // magic 0: a format is under way, or a wipe
    return make_error(Errc::reformatted, backend_->path() + ": the region was formatted anew (format id " +
                                             hex(info_.format_id) + " is now " + hex(format_id) + ")");
  }
  if (magic != IVSHMFS_MAGIC) {
    // Same format id: nobody formatted it, someone damaged the magic.
    return make_error(Errc::corrupt_header, backend_->path() + ": corrupt header: the magic is now " + hex(magic) +
                                                " (expected " + hex(IVSHMFS_MAGIC) +
                                                "), with the same format id: the header was damaged");
  }
  return {};
}

namespace {

constexpr int kMaxReadAttempts = 10000;

[[gnu::cold, gnu::noinline]] Error keeps_resetting(const Region& region, uint32_t id) {
  return make_error(Errc::busy, region.backend().path() + ": partition " + std::to_string(id) +
                                    " stays mid-reset (its generation stays odd: a reset is under way, or its owner "
                                    "was stopped in one; the owner finishes it, else try again later)");
}

[[gnu::cold, gnu::noinline]] Error no_partition(const Region& region, uint32_t id) {
  return make_error(Errc::no_such_partition, region.backend().path() + ": no partition " + std::to_string(id) +
                                                 " (the region has " + std::to_string(region.info().partition_count) +
                                                 ")");
}

struct ProcStat {
  char state = '?';
  uint64_t start_time = 0;  // field 22: clock ticks after boot
};

// Fields 3 and 22 of /proc/PID/stat ("self" for this process); nullopt when
// the file cannot be read (errno tells why) or does not parse.
std::optional<ProcStat> read_proc_stat(const std::string& pid) {
  errno = 0;
  std::ifstream file("/proc/" + pid + "/stat");
  std::string line;
  if (!file || !std::getline(file, line)) {
    if (errno == 0) errno = EIO;
    return std::nullopt;
  }
  // The command name (field 2) may hold spaces and parentheses: the fields
  // after it start after the last ')'.
  const auto paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) {
    errno = EINVAL;
    return std::nullopt;
  }
  std::istringstream rest(line.substr(paren + 2));
  ProcStat s;
  rest >> s.state;
  std::string field;
  for (int i = 4; i < 22 && rest >> field; ++i) {
  }
  if (!(rest >> s.start_time)) {
    errno = EINVAL;
    return std::nullopt;
  }
  return s;
}

// /proc describes the processes of our own PID namespace (its "self" is our
// pid): only then do its pids mean what getpid() means.
bool proc_is_ours() {
  char link[32] = {};
  const ssize_t n = ::readlink("/proc/self", link, sizeof link - 1);
  return n > 0 && std::string_view(link, static_cast<std::size_t>(n)) == std::to_string(::getpid());
}

// Where the file's bytes lie now: the head first (acquire), then what it
// publishes. Call inside an even generation and check the generation after.
detail::FileMap current_map(ivshmfs_control& c, const PartitionInfo& p) noexcept {
  const uint64_t head = load_acquire(c.head);
  return detail::file_map(head, load_relaxed(c.base), load_relaxed(c.hole_offset), load_relaxed(c.hole_length),
                          p.capacity);
}

// Whether a hole of the control block lies inside the data area.
bool fits(uint64_t hole_offset, uint64_t hole_length, uint64_t capacity) noexcept {
  return hole_length != 0 && hole_offset <= capacity && hole_length <= capacity - hole_offset;
}

// How many of the file's bytes [offset, offset+max) exist.
std::size_t committed_bytes(const detail::FileMap& m, uint64_t offset, std::size_t max) noexcept {
  return offset < m.length ? static_cast<std::size_t>(std::min<uint64_t>(max, m.length - offset)) : 0;
}

void backoff(int attempt) {
  if (attempt > 16) std::this_thread::yield();
}

detail::RingMap current_ring(ivshmfs_control& c, const PartitionInfo& p) noexcept {
  const uint64_t head = load_acquire(c.head);
  return detail::ring_map(head, load_relaxed(c.base), load_relaxed(c.reserve_end), p.capacity);
}

[[gnu::cold, gnu::noinline]] Error overrun(const Region& region, uint32_t id, uint64_t offset, uint64_t retained_from) {
  return make_error(Errc::overrun, region.backend().path() + ": partition " + std::to_string(id) +
                                       ": the ring's writer overwrote offset " + std::to_string(offset) +
                                       " (the oldest retained byte is at " + std::to_string(retained_from) + ")");
}

}  // namespace

// A ring (docs/layout.md, "Ring partitions"): copy what the snapshot says is
// retained, then re-load reserve_end after the copy: the writer raises it
// before it overwrites, so bytes still above reserve_end - capacity are the
// ones that were at those positions.
Result<std::size_t> Region::read_ring(const PartitionInfo& p, uint64_t offset, std::span<std::byte> out,
                                      uint64_t* generation) const {
  ivshmfs_control* c = control(p);
  const std::byte* base = data(p);
  const uint64_t capacity = p.capacity;
  for (int attempt = 0; attempt < kMaxReadAttempts; ++attempt) {
    const uint64_t gen = load_acquire(c->generation);
    if (gen % 2 == 0) [[likely]] {
      const uint64_t b = load_relaxed(c->base);
      const detail::RingMap m = current_ring(*c, p);
      std::size_t n = 0;
      if (offset < m.length && offset >= m.retained_from) {
        n = static_cast<std::size_t>(std::min<uint64_t>(out.size(), m.length - offset));
        const uint64_t slot = offset % capacity;
        const std::size_t first = static_cast<std::size_t>(std::min<uint64_t>(n, capacity - slot));
        detail::racy_copy(out.data(), base + slot, first);
        if (n > first) detail::racy_copy(out.data() + first, base, n - first);
      }
      std::atomic_thread_fence(std::memory_order_acquire);
      if (backend_->mapping_lost()) [[unlikely]]
        return backend_->loss_error();
      const uint64_t reserve_end = load_relaxed(c->reserve_end);
      if (load_relaxed(c->generation) == gen && load_relaxed(c->base) == b) [[likely]] {
        if (offset < m.retained_from) return overrun(*this, p.id, offset, m.retained_from);
        // What the writer announced since: bytes below it less a ring were
        // (perhaps) overwritten while we copied them.
        const detail::RingMap after = detail::ring_map(b + m.length, b, reserve_end, capacity);
        if (n > 0 && offset < after.retained_from) return overrun(*this, p.id, offset, after.retained_from);
        if (generation != nullptr) *generation = gen;
        return n;
      }
    }
    backoff(attempt);
  }
  return keeps_resetting(*this, p.id);
}

bool Region::generation_unchanged(uint32_t id, uint64_t generation) const noexcept {
  const PartitionInfo* p = find(id);
  if (p == nullptr) return false;
  std::atomic_thread_fence(std::memory_order_acquire);
  return load_relaxed(control(*p)->generation) == generation;
}

Result<ReadView> Region::view(uint32_t id, uint64_t offset, std::size_t max) const {
  const PartitionInfo* p = find(id);
  if (p == nullptr) return no_partition(*this, id);
  if (p->ring) {
    return make_error(Errc::invalid_argument, backend_->path() + ": partition " + std::to_string(id) +
                                                  " is a ring: its bytes cannot be viewed in place, read them");
  }
  ivshmfs_control* c = control(*p);
  for (int attempt = 0; attempt < kMaxReadAttempts; ++attempt) {
    const uint64_t gen = load_acquire(c->generation);
    if (backend_->mapping_lost()) [[unlikely]]
      return backend_->loss_error();
    if (gen % 2 != 0) {  // a reset is under way
      backoff(attempt);
      continue;
    }
    const detail::FileMap m = current_map(*c, *p);
    std::size_t n = committed_bytes(m, offset, max);
    // A view is contiguous: it ends where the hole begins.
    if (offset < m.hole_offset) n = static_cast<std::size_t>(std::min<uint64_t>(n, m.hole_offset - offset));
    return ReadView{{data(*p) + (n > 0 ? m.physical(offset) : 0), n}, gen};
  }
  return make_error(Errc::busy, backend_->path() + ": partition " + std::to_string(id) + " stays mid-reset");
}

Result<std::size_t> Region::read(uint32_t id, uint64_t offset, std::span<std::byte> out, uint64_t* generation) const {
  const PartitionInfo* p = find(id);
  if (p == nullptr) [[unlikely]]
    return no_partition(*this, id);
  if (p->ring) return read_ring(*p, offset, out, generation);
  ivshmfs_control* c = control(*p);
  const std::byte* base = data(*p);
  for (int attempt = 0; attempt < kMaxReadAttempts; ++attempt) {
    const uint64_t gen = load_acquire(c->generation);
    if (gen % 2 == 0) [[likely]] {  // odd: a reset is under way
      const detail::FileMap m = current_map(*c, *p);
      const std::size_t n = committed_bytes(m, offset, out.size());
      if (n > 0) [[likely]] {
        // At most two pieces: before and after the hole.
        const std::size_t first =
            offset < m.hole_offset ? static_cast<std::size_t>(std::min<uint64_t>(n, m.hole_offset - offset)) : 0;
        if (first > 0) std::memcpy(out.data(), base + offset, first);
        if (n > first) std::memcpy(out.data() + first, base + m.physical(offset + first), n - first);
      }
      // Committed bytes never change within a generation, so an unchanged
      // generation proves the copy is all from one.
      std::atomic_thread_fence(std::memory_order_acquire);
      if (backend_->mapping_lost()) [[unlikely]]
        return backend_->loss_error();
      if (load_relaxed(c->generation) == gen) [[likely]] {
        if (generation != nullptr) *generation = gen;
        return n;
      }
    }
    backoff(attempt);
  }
  return keeps_resetting(*this, id);
}

Result<void> Region::announce_waiting(uint32_t own_id, uint64_t mask) const {
  const PartitionInfo* p = find(own_id);
  if (p == nullptr) return no_partition(*this, own_id);
  if (!backend_->writable()) return make_error(Errc::invalid_argument, backend_->path() + ": mapped read-only");
  store_relaxed(control(*p)->waiting_for, mask);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return {};
}

uint64_t Region::waiting_for(uint32_t id) const noexcept {
  const PartitionInfo* p = find(id);
  if (p == nullptr) return 0;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return load_relaxed(control(*p)->waiting_for);
}

Result<PartitionSnapshot> Region::snapshot(uint32_t id) const {
  const PartitionInfo* p = find(id);
  if (p == nullptr) return no_partition(*this, id);
  ivshmfs_control* c = control(*p);
  for (int attempt = 0; attempt < kMaxReadAttempts; ++attempt) {
    const uint64_t gen = load_acquire(c->generation);
    if (p->ring) {
      const detail::RingMap m = current_ring(*c, *p);
      PartitionSnapshot s{m.length, gen, load_relaxed(c->last_write_ns), p->capacity, m.retained_from};
      std::atomic_thread_fence(std::memory_order_acquire);
      if (gen % 2 == 0 && load_relaxed(c->generation) == gen) return s;
      backoff(attempt);
      continue;
    }
    const uint64_t hole = load_relaxed(c->hole_length);
    const uint64_t fenced = fits(load_relaxed(c->hole_offset), hole, p->capacity) ? hole : 0;
    const uint64_t length = current_map(*c, *p).length;
    PartitionSnapshot s{length, gen, load_relaxed(c->last_write_ns),
                        p->capacity - std::min(p->capacity, length + fenced)};
    std::atomic_thread_fence(std::memory_order_acquire);
    if (gen % 2 == 0 && load_relaxed(c->generation) == gen) return s;
    backoff(attempt);
  }
  return make_error(Errc::busy, backend_->path() + ": partition " + std::to_string(id) + " stays mid-reset");
}

Result<PartitionStat> Region::stat(uint32_t id, const LivenessPolicy& policy) const {
  const PartitionInfo* p = find(id);
  if (p == nullptr) return no_partition(*this, id);
  ivshmfs_control* c = control(*p);
  PartitionStat s;
  s.id = id;
  s.capacity = p->capacity;
  s.ring = p->ring;
  if (auto snap = snapshot(id)) {
    s.length = snap->length;
    s.generation = snap->generation;
    s.last_write_ns = snap->last_write_ns;
    s.retained_from = snap->retained_from;
  } else {
    // A reset that stays half done (its owner stopped or died in it): still
    // tell who owns the partition, so that it can be taken over and repaired.
    s.mid_reset = true;
    s.generation = load_acquire(c->generation);
    if (p->ring) {
      const detail::RingMap m = current_ring(*c, *p);
      s.length = m.length;
      s.retained_from = m.retained_from;
    } else {
      s.length = current_map(*c, *p).length;
    }
    s.last_write_ns = load_relaxed(c->last_write_ns);
  }
  s.claimed = load_acquire(c->owner_token) != 0;
  s.owner_pid = load_relaxed(c->owner_pid);
  s.owner_since_ns = load_relaxed(c->owner_since_ns);
  s.owner_heartbeat_ns = load_relaxed(c->owner_heartbeat_ns);
  s.owner_local = load_relaxed(c->owner_host) == local_host_id();
  s.owner_pid_ns = load_relaxed(c->owner_pid_ns);
  s.owner_start_time = load_relaxed(c->owner_start_time);
  s.head = load_relaxed(c->head);
  s.base = load_relaxed(c->base);
  s.reserve_end = load_relaxed(c->reserve_end);
  s.hole_offset = load_relaxed(c->hole_offset);
  s.hole_length = load_relaxed(c->hole_length);
  // A ring never shows a hole (its takeovers never fence; see the writer).
  s.fenced = !p->ring && fits(s.hole_offset, s.hole_length, p->capacity) ? s.hole_length : 0;
  s.free = p->ring ? s.capacity : s.capacity - std::min(s.capacity, s.length + s.fenced);
  if (s.claimed) {
    const uint64_t now = wall_clock_ns();
    const uint64_t stale_ns = static_cast<uint64_t>(policy.stale_after.count()) * 1'000'000ULL;
    // A heartbeat from a clock ahead of ours counts as fresh.
    const bool fresh = s.owner_heartbeat_ns >= now || now - s.owner_heartbeat_ns <= stale_ns;
    // A proven-dead owner is dead at once, heartbeat or not.
    s.owner_dead = owner_proven_dead(s.owner_local, s.owner_pid, s.owner_pid_ns, s.owner_start_time);
    s.alive = fresh && !s.owner_dead;
  }
  return s;
}

ProcessIdentity local_process_identity() {
  ProcessIdentity id;
  id.pid = static_cast<uint64_t>(::getpid());
  struct stat st {};
  if (proc_is_ours() && ::stat("/proc/self/ns/pid", &st) == 0) {
    id.pid_ns = static_cast<uint64_t>(st.st_ino);
    if (auto ps = read_proc_stat("self")) id.start_time = ps->start_time;
  }
  return id;
}

bool owner_proven_dead(bool owner_local, uint64_t pid, uint64_t pid_ns, uint64_t start_time) {
  // Only facts that hold across PID namespaces: the same boot, the same PID
  // namespace as ours (so the pid means the same process), and then the
  // process is gone, is a zombie, or started at another time (pid reused).
  if (!owner_local || pid_ns == 0 || pid == 0 || pid >= (1ULL << 31)) return false;
  const ProcessIdentity self = local_process_identity();
  if (self.pid_ns == 0 || self.pid_ns != pid_ns) return false;
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return true;
  auto ps = read_proc_stat(std::to_string(pid));
  if (!ps) return errno == ENOENT || errno == ESRCH;  // exited between kill() and the read
  if (ps->state == 'Z' || ps->state == 'X') return true;
  return start_time != 0 && ps->start_time != start_time;
}

}  // namespace ivshmfs
