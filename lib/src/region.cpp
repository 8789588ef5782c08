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
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "ivshmfs/identity.hpp"
#include "partition_table.hpp"
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
  uint64_t room = size > data_offset ? size - data_offset : 0;
  // A live table keeps room to grow: `free_bytes` if given, else the share
  // of every slot no partition takes at format.
  const uint64_t kept_free = options.free_bytes.value_or(0) / IVSHMFS_PAGE_SIZE * IVSHMFS_PAGE_SIZE;
  if (options.slots != 0 && options.free_bytes) {
    if (kept_free > room) {
      return make_error(Errc::region_too_small, path + ": " + format_size(size) + " cannot keep " +
                                                    format_size(kept_free) + " free (the data area is " +
                                                    format_size(room) + ")");
    }
    room -= kept_free;
  }
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
    const uint64_t empty_slots = options.slots != 0 && !options.free_bytes ? options.slots - count : 0;
    const uint64_t share = (room - sized) / (unsized + empty_slots) / IVSHMFS_PAGE_SIZE * IVSHMFS_PAGE_SIZE;
    if (share < IVSHMFS_MIN_CAPACITY) {
      return make_error(Errc::region_too_small,
                        path + ": " + format_size(size) + " leaves less than a page for each of " +
                            std::to_string(unsized + empty_slots) + " partitions or free slots");
    }
    for (PartitionLayout& p : plan) {
      if (p.capacity == 0) p.capacity = share;
    }
  }
  return plan;
}

}  // namespace

namespace {
// Formatting without --force: only a blank backend (no magic, a zero header
// area) may be laid out; anything else may hold peers' data.
Result<void> refuse_unless_blank(const Backend& backend) {
  const std::string& path = backend.path();
  const uint64_t magic = load_acquire(reinterpret_cast<ivshmfs_header*>(backend.bytes().data())->magic);
  if (magic != 0) {
    return make_error(Errc::already_formatted,
                      path + ": already holds data (magic " + hex(magic) + "); pass --force to format it anew");
  }
  if (auto set = first_nonzero_metadata(backend.bytes())) {
    return make_error(Errc::already_formatted, path +
                                                   ": holds no ivshmfs magic, but its header area is not blank "
                                                   "(byte " +
                                                   std::to_string(*set) +
                                                   " is set): it may be a damaged region with peers' data; "
                                                   "pass --force to format it anew");
  }
  return {};
}
}  // namespace

namespace {
bool split_of(const FormatOptions& options) { return options.split_pieces != 0; }
}  // namespace

Result<void> Region::format(Backend& backend, const FormatOptions& options) {
  const std::string& path = backend.path();
  if (!backend.writable()) return make_error(Errc::read_only, path + ": opened read-only, cannot format");
  const uint32_t count = options.partitions;
  // A piece added later (Region::add_partition) may have an id past the
  // count of pieces formatted together.
  if (options.split_pieces != 0 && (count != 1 || options.split_pieces > IVSHMFS_MAX_PARTITIONS ||
                                    options.piece_id >= IVSHMFS_MAX_PARTITIONS || options.format_id == 0)) {
    return make_error(Errc::invalid_argument, path + ": a piece of a split region holds one partition, its id below " +
                                                  std::to_string(IVSHMFS_MAX_PARTITIONS) + ", of a piece count 1.." +
                                                  std::to_string(IVSHMFS_MAX_PARTITIONS) +
                                                  ", and a non-zero format id");
  }
  if ((count == 0 && options.slots == 0) || count > IVSHMFS_MAX_PARTITIONS) {
    return make_error(Errc::invalid_argument, "partition count " + std::to_string(count) + " is out of range 1.." +
                                                  std::to_string(IVSHMFS_MAX_PARTITIONS));
  }
  if (options.slots != 0 && (options.slots < count || options.slots > IVSHMFS_MAX_PARTITIONS || split_of(options))) {
    return make_error(Errc::invalid_argument, path + ": " + std::to_string(options.slots) +
                                                  " table slots: a live table needs at least as many slots as "
                                                  "partitions (" +
                                                  std::to_string(count) + "), at most " +
                                                  std::to_string(IVSHMFS_MAX_PARTITIONS) +
                                                  ", and a region that is not split");
  }
  const uint32_t slots = options.slots != 0 ? options.slots : count;
  const uint64_t size = backend.size();
  const uint64_t control_offset =
      round_up(sizeof(ivshmfs_header) + slots * sizeof(ivshmfs_partition_entry), IVSHMFS_CONTROL_ALIGN);
  const uint64_t data_offset = round_up(control_offset + slots * sizeof(ivshmfs_control), IVSHMFS_PAGE_SIZE);
  auto plan = plan_partitions(path, size, data_offset, options);
  if (!plan) return std::move(plan).error();

  if (!options.force) {
    if (auto blank = refuse_unless_blank(backend); !blank) return blank;
  }
  auto* header = reinterpret_cast<ivshmfs_header*>(backend.bytes().data());

  // Peers must never see a half-written header: clear the magic first, publish it last.
  store_release(header->magic, 0);
  std::memset(backend.bytes().data() + sizeof(uint64_t), 0, data_offset - sizeof(uint64_t));
  header->version = IVSHMFS_LAYOUT_VERSION;
  header->header_size = sizeof(ivshmfs_header);
  header->region_size = size;
  const bool split = options.split_pieces != 0;
  store_relaxed(header->format_id, split ? options.format_id : detail::random_nonzero());
  header->format_time_ns = wall_clock_ns();
  header->partition_count = slots;
  header->page_size = IVSHMFS_PAGE_SIZE;
  header->control_offset = control_offset;
  header->data_offset = data_offset;
  header->features = split ? IVSHMFS_FEATURE_SPLIT : 0;
  const bool live = options.slots != 0;
  if (live) header->features |= IVSHMFS_FEATURE_LIVE_TABLE;
  header->split_pieces = options.split_pieces;
  auto* table = reinterpret_cast<ivshmfs_partition_entry*>(backend.bytes().data() + sizeof(ivshmfs_header));
  uint64_t next = data_offset;
  for (uint32_t i = count; i < slots; ++i) {  // free slots of a live table
    table[i].control_offset = control_offset + uint64_t{i} * sizeof(ivshmfs_control);
  }
  for (uint32_t i = 0; i < count; ++i) {
    const PartitionLayout& want = (*plan)[i];
    table[i].id = split ? options.piece_id : i;
    table[i].flags = want.ring ? IVSHMFS_PARTITION_RING : 0;
    if (live) table[i].flags |= IVSHMFS_PARTITION_LIVE | (uint32_t{1} << IVSHMFS_PARTITION_SERIAL_SHIFT);
    if (want.ring && !live) header->features |= IVSHMFS_FEATURE_RING;
    table[i].control_offset = control_offset + uint64_t{i} * sizeof(ivshmfs_control);
    table[i].data_offset = next;
    table[i].capacity = want.capacity;
    next += want.capacity;
  }
  store_release(header->magic, IVSHMFS_MAGIC);
  return {};
}

Region::~Region() = default;

namespace {

// One backend's validated header and partition table, in private memory.
struct ValidPiece {
  ivshmfs_header header{};
  std::vector<PartitionInfo> partitions;  // piece-relative offsets; index and piece not yet set
  uint64_t table_seq = 0;                 // a live table: the seqlock value it was copied at
};

// Copies the header and partition table of one backend into private memory
// once and validates every field. Never reads outside the mapping.
Result<ValidPiece> validate_piece(const Backend& backend) {
  const std::string& path = backend.path();
  const std::span<std::byte> bytes = backend.bytes();
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
  if ((h.features & IVSHMFS_FEATURE_SPLIT) != 0) {
    if (h.split_pieces == 0 || h.split_pieces > IVSHMFS_MAX_PARTITIONS) {
      return corrupt("split_pieces " + std::to_string(h.split_pieces) + " is out of range 1.." +
                     std::to_string(IVSHMFS_MAX_PARTITIONS));
    }
    if (h.partition_count != 1)
      return corrupt("a piece of a split region holds " + std::to_string(h.partition_count) + " partitions, not 1");
  }
  if (h.reserved32 != 0) return corrupt("reserved32 is " + hex(h.reserved32) + ", not 0");
  const bool live = (h.features & IVSHMFS_FEATURE_LIVE_TABLE) != 0;
  if (live && (h.features & IVSHMFS_FEATURE_SPLIT) != 0)
    return corrupt("a piece of a split region with a live partition table");
  if (!live && (h.table_seq != 0 || h.table_lock != 0)) {
    return corrupt("table_seq " + hex(h.table_seq) + " / table_lock " + hex(h.table_lock) +
                   " set in a region whose partition table is fixed");
  }
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

  ValidPiece piece;
  piece.header = h;
  std::vector<ivshmfs_partition_entry> table(count);
  if (live) {
    // The table changes under its seqlock: a copy taken while it stays odd
    // (a changer died in a change) is checked entry by entry all the same.
    detail::TableCopy copy = detail::copy_live_table(bytes.data(), h.partition_count);
    table = std::move(copy.entries);
    piece.table_seq = copy.seq;
  } else {
    std::memcpy(table.data(), bytes.data() + sizeof(ivshmfs_header), count * sizeof(ivshmfs_partition_entry));
  }
  std::vector<std::string> skipped;
  auto partitions = detail::check_table(path, h, table, size, &skipped);
  if (!partitions) return std::move(partitions).error();
  for (const std::string& why : skipped) spdlog::warn("{}", why);
  piece.partitions = std::move(partitions).value();
  return piece;
}

}  // namespace

Result<std::shared_ptr<Region>> Region::open(std::unique_ptr<Backend> backend) {
  if (!backend) return make_error(Errc::invalid_argument, "no backend");
  std::string name = backend->path();
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(std::move(backend));
  return open_pieces(std::move(backends), std::move(name));
}

Result<std::shared_ptr<Region>> Region::open_pieces(std::vector<std::unique_ptr<Backend>> backends, std::string name) {
  if (backends.empty()) return make_error(Errc::invalid_argument, name + ": no backend");
  std::vector<ValidPiece> valid;
  for (const auto& backend : backends) {
    if (!backend) return make_error(Errc::invalid_argument, name + ": no backend");
    auto piece = validate_piece(*backend);
    if (!piece) return std::move(piece).error();
    valid.push_back(std::move(piece).value());
  }
  const ivshmfs_header& first = valid.front().header;
  const bool split = (first.features & IVSHMFS_FEATURE_SPLIT) != 0;
  if (backends.size() > 1) {
    for (std::size_t i = 0; i < valid.size(); ++i) {
      const ivshmfs_header& h = valid[i].header;
      const std::string& path = backends[i]->path();
      if ((h.features & IVSHMFS_FEATURE_SPLIT) == 0) {
        return make_error(Errc::invalid_argument,
                          path + ": a whole region, not a piece of a split region: it cannot be opened with " +
                              backends[i == 0 ? 1 : 0]->path());
      }
      if (h.format_id != first.format_id || h.version != first.version || h.split_pieces != first.split_pieces) {
        return make_error(Errc::invalid_argument,
                          path + ": a piece of another split region (format id " + hex(h.format_id) + ", " +
                              std::to_string(h.split_pieces) + " pieces) than " + backends[0]->path() + " (format id " +
                              hex(first.format_id) + ", " + std::to_string(first.split_pieces) +
                              " pieces): pieces of two regions are never mixed; format them again together");
      }
    }
  }

  auto region = std::shared_ptr<Region>(new Region());
  region->path_ = std::move(name);
  std::array<bool, IVSHMFS_MAX_PARTITIONS> seen{};
  std::vector<PartitionInfo> partitions;
  uint64_t total = 0;
  for (std::size_t i = 0; i < valid.size(); ++i) {
    total += backends[i]->size();
    for (PartitionInfo p : valid[i].partitions) {
      if (seen[p.id]) {
        return make_error(Errc::invalid_argument, backends[i]->path() + ": partition " + std::to_string(p.id) +
                                                      " is in two of the pieces given: two copies of one piece");
      }
      seen[p.id] = true;
      p.piece = static_cast<uint32_t>(i);
      // A live table's partitions keep their slot; a split region's
      // partition sits in the slot of its id, so pieces may come and go.
      if (split) p.index = p.id;
      partitions.push_back(p);
    }
    if (i >= PieceList::kCapacity) return make_error(Errc::invalid_argument, region->path_ + ": too many pieces");
    Piece piece;
    piece.damaged = std::make_unique<std::atomic<bool>>(false);
    piece.retired = std::make_unique<std::atomic<bool>>(false);
    piece.base = backends[i]->bytes().data();
    struct stat st {};
    if (backends[i]->fd() >= 0 && ::fstat(backends[i]->fd(), &st) == 0) {
      piece.device = static_cast<uint64_t>(st.st_dev);
      piece.inode = static_cast<uint64_t>(st.st_ino);
    }
    piece.backend = std::move(backends[i]);
    region->pieces_.push_back(std::move(piece));
  }
  const std::size_t opened = partitions.size();
  region->info_ = RegionInfo{first.version,
                             total,
                             first.format_id,
                             first.format_time_ns,
                             static_cast<uint32_t>(opened),
                             first.data_offset,
                             split ? first.split_pieces : 0,
                             first.features,
                             split ? IVSHMFS_MAX_PARTITIONS : first.partition_count};
  region->region_size_.store(total, std::memory_order_relaxed);
  region->header_ = first;
  region->seen_seq_.store(valid.front().table_seq, std::memory_order_relaxed);
  region->publish(std::move(partitions));
  if (split && opened < first.split_pieces) {
    std::string missing;
    for (uint32_t id = 0; id < first.split_pieces; ++id) {
      if (!seen[id]) missing += (missing.empty() ? "" : ", ") + std::to_string(id);
    }
    spdlog::warn("{}: {} of {} pieces present; missing partition(s) {} are not shown", region->path_, opened,
                 first.split_pieces, missing);
  }
  return region;
}

std::string split_piece_path(std::string_view prefix, uint32_t id) {
  return std::string(prefix) + ".vm" + std::to_string(id);
}

namespace {

// The pieces PREFIX.vmN that exist, by id.
std::vector<std::pair<uint32_t, std::string>> existing_pieces(std::string_view prefix) {
  std::vector<std::pair<uint32_t, std::string>> found;
  for (uint32_t id = 0; id < IVSHMFS_MAX_PARTITIONS; ++id) {
    std::string piece = split_piece_path(prefix, id);
    struct stat st {};
    if (::stat(piece.c_str(), &st) == 0) found.emplace_back(id, std::move(piece));
  }
  return found;
}

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The modification time (ns) of the directory holding a split region's
// pieces: it moves whenever a piece file is created, linked, renamed or
// removed there. -1 when it cannot be read.
int64_t directory_stamp(const std::string& directory) noexcept {
  struct stat st {};
  if (::stat(directory.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

}  // namespace

bool Region::is_split_prefix(std::string_view path) {
  struct stat st {};
  if (::stat(std::string(path).c_str(), &st) == 0) return false;
  return !existing_pieces(path).empty();
}

Result<void> Region::format_split(std::string_view prefix, uint32_t partitions, uint64_t piece_size, bool force) {
  const std::string name(prefix);
  if (partitions == 0 || partitions > IVSHMFS_MAX_PARTITIONS) {
    return make_error(Errc::invalid_argument, "partition count " + std::to_string(partitions) + " is out of range 1.." +
                                                  std::to_string(IVSHMFS_MAX_PARTITIONS));
  }
  if (!is_power_of_two(piece_size) || piece_size < uint64_t{2} * IVSHMFS_PAGE_SIZE) {
    return make_error(Errc::invalid_argument,
                      name + ": piece size " + std::to_string(piece_size) +
                          " is not a power of two of at least 8K: each piece becomes a PCI BAR, whose size is a "
                          "power of two (e.g. --size 1M)");
  }
  {
    struct stat st {};
    if (::stat(name.c_str(), &st) == 0) {
      return make_error(Errc::invalid_argument, name + ": a file of that name exists: a split region's prefix " +
                                                    "names no file of its own (its pieces are " +
                                                    split_piece_path(name, 0) + ", ...)");
    }
  }
  // First pass: open every piece and check it may be formatted, before any
  // byte is written, so a refusal loses nothing.
  std::vector<std::unique_ptr<Backend>> backends;
  auto undo = [&] {
    for (auto& b : backends) b->remove_if_created();
  };
  for (uint32_t id = 0; id < partitions; ++id) {
    const std::string path = split_piece_path(name, id);
    auto backend = Backend::open(path, BackendOptions{true, true, piece_size});
    if (!backend) {
      undo();
      return std::move(backend).error();
    }
    if ((*backend)->size() != piece_size) {
      undo();
      return make_error(Errc::size_mismatch, path + ": exists with " + std::to_string((*backend)->size()) +
                                                 " bytes, not " + std::to_string(piece_size) +
                                                 "; remove it or format with its size");
    }
    if (!force && !(*backend)->created()) {
      if (auto blank = refuse_unless_blank(**backend); !blank) {
        undo();
        return blank;
      }
    }
    backends.push_back(std::move(backend).value());
  }
  std::vector<std::string> stale;
  for (const auto& [id, path] : existing_pieces(name)) {
    if (id >= partitions) stale.push_back(path);
  }
  if (!stale.empty() && !force) {
    undo();
    return make_error(Errc::already_formatted, stale.front() + ": a piece of an older format with more pieces; " +
                                                   "pass --force to remove it and format anew");
  }
  FormatOptions options;
  options.partitions = 1;
  options.force = true;
  options.split_pieces = partitions;
  options.format_id = detail::random_nonzero();
  for (uint32_t id = 0; id < partitions; ++id) {
    options.piece_id = id;
    if (auto r = format(*backends[id], options); !r) {
      undo();
      return r;
    }
  }
  for (const std::string& path : stale) {
    if (::unlink(path.c_str()) != 0) return make_sys_error(path + ": cannot remove a stale piece");
  }
  return {};
}

namespace {

// Whether stores to a piece's mapping stick: the guest's view of a BAR that
// QEMU backs read-only is writable, but the stores are discarded. The probe
// uses the control block's reserved0 word (ignored by readers, never written
// otherwise): a non-zero value stored and read back, then zero again.
bool probe_writable(const Backend& backend, const PartitionInfo& p) {
  auto* c = reinterpret_cast<ivshmfs_control*>(backend.bytes().data() + p.control_offset);
  const uint64_t probe = detail::random_nonzero();
  uint64_t expected = 0;
  if (!detail::compare_exchange(c->reserved0, expected, probe)) {
    // Left non-zero by a probe that was interrupted: take it back.
    detail::compare_exchange(c->reserved0, expected, 0);
    expected = 0;
    if (!detail::compare_exchange(c->reserved0, expected, probe)) return false;
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const bool stuck = detail::load_seq_cst(c->reserved0) == probe;
  if (stuck) store_release(c->reserved0, 0);
  return stuck;
}

std::string readonly_hint(const std::string& device, uint32_t id) {
  return device + " (partition " + std::to_string(id) +
         ", this VM's own piece) discards writes: QEMU backs it read-only; remove readonly=on from the "
         "memory-backend-file of its piece (PREFIX.vm" +
         std::to_string(id) + ") in this VM's QEMU options ('ivshmctl qemu-args --peer " + std::to_string(id) +
         " PREFIX' prints them)";
}

}  // namespace

Result<std::shared_ptr<Region>> Region::discover(std::optional<uint32_t> own_id, bool writable,
                                                 std::optional<uint32_t>* chosen) {
  const std::vector<std::string> devices = find_all_backends();
  if (devices.empty()) {
    return make_error(Errc::invalid_argument, "no ivshmem device found (no /dev/ivshmN, no PCI device 1af4:1110)");
  }
  struct Found {
    std::string path;
    uint64_t format_id;
    uint32_t id;
  };
  std::vector<Found> pieces;
  for (const std::string& path : devices) {
    auto backend = Backend::open(path, BackendOptions{false, false, 0});
    if (!backend) {
      spdlog::warn("{}", backend.error().message);
      continue;
    }
    auto valid = validate_piece(**backend);
    if (!valid) {
      spdlog::info("{}: not a piece of a split region: {}", path, valid.error().message);
      continue;
    }
    if ((valid->header.features & IVSHMFS_FEATURE_SPLIT) == 0) continue;
    pieces.push_back(Found{path, valid->header.format_id, valid->partitions.front().id});
  }
  if (pieces.empty()) {
    // No split region: the single-file region of the first device, as before.
    RegionOpenOptions options;
    options.writable = writable;
    spdlog::info("no BACKEND given: using {}", devices.front());
    return open_path(devices.front(), options);
  }
  // Known own piece: its region's pieces are ours, any other is left out (a
  // peer VM can rewrite its own piece's identity, but not make this VM's
  // region unusable).
  if (own_id && writable) {
    auto own = std::find_if(pieces.begin(), pieces.end(), [&](const Found& f) { return f.id == *own_id; });
    if (own != pieces.end()) {
      const uint64_t identity = own->format_id;
      std::vector<Found> kept;
      for (Found& f : pieces) {
        if (f.format_id == identity) {
          kept.push_back(std::move(f));
        } else {
          spdlog::warn("{}: a piece of another split region (format id {}, this VM's is {}); left out", f.path,
                       hex(f.format_id), hex(identity));
        }
      }
      pieces = std::move(kept);
    }
  }
  for (const Found& f : pieces) {
    if (f.format_id != pieces.front().format_id) {
      return make_error(Errc::invalid_argument,
                        "the ivshmem devices hold pieces of two split regions: " + pieces.front().path +
                            " (format id " + hex(pieces.front().format_id) + ") and " + f.path + " (format id " +
                            hex(f.format_id) +
                            "); give this VM the pieces of one region only ('ivshmctl qemu-args' on the host)");
    }
  }
  std::string list;
  for (const Found& f : pieces) list += (list.empty() ? "" : ", ") + f.path + "=vm" + std::to_string(f.id);
  spdlog::info("split region {}: pieces {}", hex(pieces.front().format_id), list);

  std::optional<uint32_t> own;
  if (writable) {
    if (own_id) {
      own = own_id;
      auto it = std::find_if(pieces.begin(), pieces.end(), [&](const Found& f) { return f.id == *own_id; });
      if (it == pieces.end()) {
        return make_error(Errc::no_such_partition,
                          "no ivshmem device holds partition " + std::to_string(*own_id) + " (this VM's own piece; " +
                              "found " + list + "): add '-object memory-backend-file,...,mem-path=PREFIX.vm" +
                              std::to_string(*own_id) + ",share=on' and its '-device ivshmem-plain' to its QEMU " +
                              "options, or pass the right -o id=");
      }
      auto backend = Backend::open(it->path, BackendOptions{true, false, 0});
      if (!backend) return std::move(backend).error();
      auto valid = validate_piece(**backend);
      if (!valid) return std::move(valid).error();
      if (!probe_writable(**backend, valid->partitions.front())) {
        return make_error(Errc::read_only, readonly_hint(it->path, *own_id));
      }
    } else {
      std::vector<const Found*> writable_pieces;
      for (const Found& f : pieces) {
        auto backend = Backend::open(f.path, BackendOptions{true, false, 0});
        if (!backend) continue;
        auto valid = validate_piece(**backend);
        if (valid && probe_writable(**backend, valid->partitions.front())) writable_pieces.push_back(&f);
      }
      if (writable_pieces.empty()) {
        return make_error(Errc::read_only,
                          "no ivshmem device of the split region takes writes (" + list +
                              "): QEMU backs every piece read-only; remove readonly=on from the memory-backend-file "
                              "of this VM's own piece, or mount read-only (-o ro)");
      }
      if (writable_pieces.size() > 1) {
        std::string names;
        for (const Found* f : writable_pieces) names += (names.empty() ? "" : ", ") + f->path;
        return make_error(Errc::invalid_argument,
                          "several pieces take writes (" + names +
                              "): QEMU gives this VM write access to other VMs' pieces; add readonly=on to "
                              "the memory-backend-file of every piece but its own ('ivshmctl qemu-args'), or "
                              "pass -o id=K");
      }
      own = writable_pieces.front()->id;
      if (chosen != nullptr) *chosen = own;
      spdlog::info("own piece: {} (partition {}), the only one that takes writes", writable_pieces.front()->path, *own);
    }
  }
  std::vector<std::unique_ptr<Backend>> backends;
  for (const Found& f : pieces) {
    auto backend = Backend::open(f.path, BackendOptions{own && f.id == *own, false, 0});
    if (!backend) return std::move(backend).error();
    backends.push_back(std::move(backend).value());
  }
  auto region = open_pieces(std::move(backends), "split:" + hex(pieces.front().format_id));
  if (!region) return region;
  if (std::all_of(pieces.begin(), pieces.end(), [](const Found& f) { return f.path.starts_with("/dev/"); })) {
    // Pieces hot-plugged later appear as new /dev/ivshmN (docs/layout.md,
    // "Pieces that come and go"): they are taken in read-only, and a device
    // gone takes its partition with it.
    auto scan = std::make_unique<PieceScan>();
    scan->directory = "/dev";
    scan->own_id = own;
    scan->seen_stamp.store(directory_stamp(scan->directory), std::memory_order_relaxed);
    (*region)->scan_ = std::move(scan);
  }
  return region;
}

Result<std::shared_ptr<Region>> Region::open_path(std::string_view path, const RegionOpenOptions& options) {
  if (is_split_prefix(path)) {
    // Every piece is another VM's to damage, its own alone excepted: a piece
    // that does not validate, or that carries another region's identity, is
    // left out (its partition is not shown) rather than refusing the whole
    // region; the own piece must be sound.
    struct Candidate {
      uint32_t id;
      std::unique_ptr<Backend> backend;
      uint64_t format_id;
    };
    std::vector<Candidate> candidates;
    for (const auto& [id, piece] : existing_pieces(path)) {
      const bool own = options.own_id && *options.own_id == id;
      const bool writable = options.writable && (!options.own_id || own);
      auto backend = Backend::open(piece, BackendOptions{writable, false, 0});
      if (!backend) return std::move(backend).error();
      auto valid = validate_piece(**backend);
      if (!valid) {
        if (own) return std::move(valid).error();
        spdlog::warn("{}; its partition is left out", valid.error().message);
        continue;
      }
      // The file's name says which partition it holds: a renamed piece is
      // refused rather than shown under another peer's name.
      if (valid->partitions.size() != 1 || valid->partitions.front().id != id) {
        return make_error(Errc::invalid_argument,
                          piece + ": holds partition " +
                              (valid->partitions.size() == 1 ? std::to_string(valid->partitions.front().id)
                                                             : std::string("table of a whole region")) +
                              ", not " + std::to_string(id) + " as its name says: renamed pieces are refused");
      }
      candidates.push_back(Candidate{id, std::move(backend).value(), valid->header.format_id});
    }
    if (candidates.empty()) {
      return make_error(Errc::corrupt_header, std::string(path) + ": no piece of the split region is sound");
    }
    // The region's identity: the own piece's, else the one most pieces carry.
    std::map<uint64_t, std::size_t> votes;
    for (const Candidate& c : candidates) ++votes[c.format_id];
    uint64_t identity = 0;
    std::size_t best = 0;
    bool tie = false;
    for (const auto& [format_id, n] : votes) {
      if (n > best) {
        identity = format_id;
        best = n;
        tie = false;
      } else if (n == best) {
        tie = true;
      }
    }
    bool own_found = false;
    for (const Candidate& c : candidates) {
      if (options.own_id && c.id == *options.own_id) {
        identity = c.format_id;
        own_found = true;
      }
    }
    if (tie && !own_found) {
      return make_error(Errc::invalid_argument,
                        std::string(path) + ": as many pieces of another split region (format id " + hex(identity) +
                            ") as of any other: pieces of two regions are never mixed; format them again together");
    }
    std::vector<std::unique_ptr<Backend>> backends;
    for (Candidate& c : candidates) {
      if (c.format_id != identity) {
        spdlog::warn("{}: a piece of another split region (format id {}, this region's is {}); left out",
                     c.backend->path(), hex(c.format_id), hex(identity));
        continue;
      }
      backends.push_back(std::move(c.backend));
    }
    auto region = open_pieces(std::move(backends), std::string(path));
    if (!region) return region;
    auto scan = std::make_unique<PieceScan>();
    scan->prefix = std::string(path);
    const auto slash = scan->prefix.rfind('/');
    scan->directory = slash == std::string::npos ? "." : slash == 0 ? "/" : scan->prefix.substr(0, slash);
    scan->own_id = options.own_id;
    scan->writable = options.writable;
    scan->seen_stamp.store(directory_stamp(scan->directory), std::memory_order_relaxed);
    (*region)->scan_ = std::move(scan);
    return region;
  }
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
  const Table* t = table();
  if (id >= t->index_by_id.size() || t->index_by_id[id] < 0) return nullptr;
  return &t->partitions[static_cast<std::size_t>(t->index_by_id[id])];
}

ivshmfs_control* Region::control(const PartitionInfo& p) const noexcept {
  return reinterpret_cast<ivshmfs_control*>(pieces_[p.piece].base + p.control_offset);
}

std::byte* Region::data(const PartitionInfo& p) const noexcept { return pieces_[p.piece].base + p.data_offset; }

std::vector<const Backend*> Region::backends() const {
  std::vector<const Backend*> out;
  out.reserve(pieces_.size());
  for (const Piece& piece : pieces_) out.push_back(piece.backend.get());
  return out;
}

bool Region::mapping_lost() const noexcept {
  return std::any_of(pieces_.begin(), pieces_.end(), [](const Piece& piece) { return piece.backend->mapping_lost(); });
}

bool Region::notice_shrink() const noexcept {
  bool lost = false;
  for (const Piece& piece : pieces_) lost = piece.backend->notice_shrink() || lost;
  return lost;
}

Result<void> Region::check_piece(const Piece& piece) const {
  auto* header = reinterpret_cast<ivshmfs_header*>(piece.base);
  const uint64_t magic = load_acquire(header->magic);
  const uint64_t format_id = load_acquire(header->format_id);
  const std::string& path = piece.backend->path();
  if (piece.backend->mapping_lost()) return piece.backend->loss_error();
  if (format_id != info_.format_id || magic == 0) {  // magic 0: a format is under way, or a wipe
    return make_error(Errc::reformatted, path + ": the region was formatted anew (format id " + hex(info_.format_id) +
                                             " is now " + hex(format_id) + ")");
  }
  if (magic != IVSHMFS_MAGIC) {
    // Same format id: nobody formatted it, someone damaged the magic.
    return make_error(Errc::corrupt_header, path + ": corrupt header: the magic is now " + hex(magic) + " (expected " +
                                                hex(IVSHMFS_MAGIC) +
                                                "), with the same format id: the header was damaged");
  }
  return {};
}

Error Region::loss_error() const {
  for (const Piece& piece : pieces_) {
    if (piece.backend->mapping_lost()) return piece.backend->loss_error();
  }
  return make_error(Errc::io_error, path_ + ": I/O error");
}

Result<void> Region::check_format() const {
  // In a split region, a piece this peer cannot write is another VM's: its
  // header formatted anew or damaged (by that VM) costs that partition only,
  // which is logged once; reads of it stay clamped to its mapping. The own
  // piece, or every piece at once (a new format), ends the region.
  const bool tolerate = split() && pieces_.size() > 1;
  std::size_t changed = 0;
  std::size_t checked = 0;
  std::optional<Error> first;
  for (const Piece& piece : pieces_) {
    if (piece.retired->load(std::memory_order_relaxed)) continue;  // no longer part of the region
    ++checked;
    auto r = check_piece(piece);
    if (r) continue;
    ++changed;
    if (!tolerate || piece.backend->writable() || r.error().code == Errc::io_error || piece.backend->mapping_lost()) {
      return r;
    }
    if (!first) first = r.error();
    if (!piece.damaged->exchange(true)) {
      spdlog::warn("{}; its partition is no longer trusted, the other partitions are served on", r.error().message);
    }
  }
  if (changed == checked && first) return *first;
  return {};
}

namespace {

constexpr int kMaxReadAttempts = 10000;

[[gnu::cold, gnu::noinline]] Error keeps_resetting(const Region& region, uint32_t id) {
  return make_error(Errc::busy, region.path() + ": partition " + std::to_string(id) +
                                    " stays mid-reset (its generation stays odd: a reset is under way, or its owner "
                                    "was stopped in one; the owner finishes it, else try again later)");
}

[[gnu::cold, gnu::noinline]] Error no_partition(const Region& region, uint32_t id) {
  return make_error(Errc::no_such_partition, region.path() + ": no partition " + std::to_string(id) +
                                                 " (the region has " + std::to_string(region.partitions().size()) +
                                                 (region.live_table() ? " now" : "") + ")");
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

[[gnu::cold, gnu::noinline]] Error overrun(const Region& region, const PartitionInfo& p, uint64_t offset,
                                           uint64_t retained_from) {
  return make_error(Errc::overrun, region.backend(p).path() + ": partition " + std::to_string(p.id) +
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
      if (backend(p).mapping_lost()) [[unlikely]]
        return backend(p).loss_error();
      const uint64_t reserve_end = load_relaxed(c->reserve_end);
      if (load_relaxed(c->generation) == gen && load_relaxed(c->base) == b) [[likely]] {
        if (offset < m.retained_from) return overrun(*this, p, offset, m.retained_from);
        // What the writer announced since: bytes below it less a ring were
        // (perhaps) overwritten while we copied them.
        const detail::RingMap after = detail::ring_map(b + m.length, b, reserve_end, capacity);
        if (n > 0 && offset < after.retained_from) return overrun(*this, p, offset, after.retained_from);
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
    return make_error(Errc::invalid_argument, backend(*p).path() + ": partition " + std::to_string(id) +
                                                  " is a ring: its bytes cannot be viewed in place, read them");
  }
  ivshmfs_control* c = control(*p);
  for (int attempt = 0; attempt < kMaxReadAttempts; ++attempt) {
    const uint64_t gen = load_acquire(c->generation);
    if (backend(*p).mapping_lost()) [[unlikely]]
      return backend(*p).loss_error();
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
  return make_error(Errc::busy, path_ + ": partition " + std::to_string(id) + " stays mid-reset");
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
      if (backend(*p).mapping_lost()) [[unlikely]]
        return backend(*p).loss_error();
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
  if (!backend(*p).writable()) return make_error(Errc::invalid_argument, backend(*p).path() + ": mapped read-only");
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
  return make_error(Errc::busy, path_ + ": partition " + std::to_string(id) + " stays mid-reset");
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

// ---------------------------------------------------------------------------
// Split regions whose pieces come and go (host side: files PREFIX.vmN)

namespace {
// A directory time this close to now may still be shared by a change to
// come (the clock behind it is coarse): such a stamp is not taken as seen.
constexpr int64_t kStampSettle = 50'000'000;  // ns
// As for live tables: every version of the table stays valid while the
// region lives.
constexpr std::size_t kMaxPieceTables = 4096;
}  // namespace

bool Region::table_moved() const noexcept {
  if (scan_) {
    const int64_t seen = scan_->seen_stamp.load(std::memory_order_relaxed);
    return seen < 0 || directory_stamp(scan_->directory) != seen;
  }
  if (!live_table()) return false;
  return detail::load_table_seq(pieces_.front().base) != seen_seq_.load(std::memory_order_relaxed);
}

Result<TableChange> Region::rescan_pieces() {
  PieceScan& scan = *scan_;
  const int64_t stamp = directory_stamp(scan.directory);
  if (stamp >= 0 && stamp == scan.seen_stamp.load(std::memory_order_relaxed)) [[likely]]
    return TableChange{};
  std::lock_guard lock(tables_mutex_);
  if (tables_.size() >= kMaxPieceTables) {
    return make_error(Errc::busy, path_ + ": the pieces changed more than " + std::to_string(kMaxPieceTables) +
                                      " times since the region was opened; the table seen before is kept (open it "
                                      "again)");
  }
  const int64_t now = static_cast<int64_t>(wall_clock_ns());
  scan.seen_stamp.store(stamp >= 0 && now - stamp > kStampSettle ? stamp : -1, std::memory_order_relaxed);

  // What may hold a piece now: on the host the files PREFIX.vmN (N is the
  // id the piece must hold), in a guest every /dev/ivshmN (the id is the
  // piece's own). Files are told apart by device and inode.
  struct Candidate {
    std::string path;
    std::optional<uint32_t> named_id;
    uint64_t device = 0;
    uint64_t inode = 0;
  };
  std::vector<Candidate> candidates;
  auto consider = [&](std::string path, std::optional<uint32_t> named_id) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return;
    if (scan.prefix.empty() ? !S_ISCHR(st.st_mode) : !S_ISREG(st.st_mode)) return;
    candidates.push_back(
        Candidate{std::move(path), named_id, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)});
  };
  if (scan.prefix.empty()) {
    for (std::string& path : find_all_backends()) {
      if (path.starts_with("/dev/")) consider(std::move(path), std::nullopt);
    }
  } else {
    for (uint32_t id = 0; id < IVSHMFS_MAX_PARTITIONS; ++id) consider(split_piece_path(scan.prefix, id), id);
  }
  auto same_file = [](const Piece& piece, const Candidate& c) {
    return piece.device == c.device && piece.inode == c.inode;
  };

  const std::vector<PartitionInfo>& before = table()->partitions;
  std::vector<PartitionInfo> rows;
  TableChange change;
  std::array<bool, IVSHMFS_MAX_PARTITIONS> held{};
  for (const PartitionInfo& p : before) {
    const Piece& piece = pieces_[p.piece];
    const bool kept = std::any_of(candidates.begin(), candidates.end(), [&](const Candidate& c) {
      return same_file(piece, c) && (!c.named_id || *c.named_id == p.id);
    });
    if (kept) {
      rows.push_back(p);
      held[p.id] = true;
      continue;
    }
    // Gone, or another file under its name (removed and added again).
    piece.retired->store(true, std::memory_order_relaxed);
    change.removed.push_back(p);
  }
  bool full_logged = false;
  for (const Candidate& c : candidates) {
    const bool known = std::any_of(pieces_.begin(), pieces_.end(), [&](const Piece& piece) {
      return !piece.retired->load(std::memory_order_relaxed) && same_file(piece, c);
    });
    if (known || scan.refused.contains({c.device, c.inode})) continue;
    if (pieces_.full()) {
      if (!full_logged) {
        spdlog::warn(
            "{}: {} pieces were opened since the region was; {} and any other new piece are not taken in "
            "(open the region again)",
            path_, PieceList::kCapacity, c.path);
      }
      full_logged = true;
      continue;
    }
    const bool own_name = scan.own_id && c.named_id && *scan.own_id == *c.named_id;
    const bool writable = scan.writable && (!scan.own_id || own_name);
    auto backend = Backend::open(c.path, BackendOptions{writable, false, 0});
    if (!backend) {
      spdlog::warn("{}; not taken in", backend.error().message);
      scan.refused.insert({c.device, c.inode});
      continue;
    }
    auto valid = validate_piece(**backend);
    std::string why;
    if (!valid) {
      why = valid.error().message;
    } else if ((valid->header.features & IVSHMFS_FEATURE_SPLIT) == 0) {
      why = c.path + ": a whole region, not a piece of a split region";
    } else if (valid->header.format_id != info_.format_id || valid->header.version != info_.version) {
      why = c.path + ": a piece of another split region (format id " + hex(valid->header.format_id) +
            ", this region's is " + hex(info_.format_id) + ")";
    } else if (valid->partitions.size() != 1 || (c.named_id && valid->partitions.front().id != *c.named_id)) {
      why = c.path + ": holds another partition than " + std::to_string(c.named_id.value_or(0)) + " as its name says";
    } else if (held[valid->partitions.front().id]) {
      why = c.path + ": a second piece of partition " + std::to_string(valid->partitions.front().id);
    }
    if (!why.empty()) {
      spdlog::warn("{}; not taken in", why);
      scan.refused.insert({c.device, c.inode});
      continue;
    }
    Piece piece;
    piece.damaged = std::make_unique<std::atomic<bool>>(false);
    piece.retired = std::make_unique<std::atomic<bool>>(false);
    piece.base = (*backend)->bytes().data();
    piece.device = c.device;
    piece.inode = c.inode;
    piece.backend = std::move(backend).value();
    PartitionInfo p = valid->partitions.front();
    p.piece = static_cast<uint32_t>(pieces_.size());
    p.index = p.id;
    held[p.id] = true;
    pieces_.push_back(std::move(piece));
    rows.push_back(p);
    change.added.push_back(p);
  }
  change.changed = !change.added.empty() || !change.removed.empty();
  if (!change.changed) return change;
  std::sort(rows.begin(), rows.end(), [](const PartitionInfo& a, const PartitionInfo& b) { return a.id < b.id; });
  for (const PartitionInfo& p : change.removed) spdlog::info("{}: partition {} was removed", path_, p.id);
  for (const PartitionInfo& p : change.added) {
    spdlog::info("{}: partition {} was added ({}, piece {})", path_, p.id, format_size(p.capacity),
                 pieces_[p.piece].backend->path());
  }
  uint64_t total = 0;
  for (const PartitionInfo& p : rows) total += pieces_[p.piece].backend->size();
  region_size_.store(total, std::memory_order_relaxed);
  publish(std::move(rows));
  return change;
}

Result<PartitionInfo> Region::add_piece(const NewPartition& wanted) {
  if (!scan_ || scan_->prefix.empty()) {
    return make_error(Errc::invalid_argument,
                      path_ +
                          ": a split region gains a piece on the host ('ivshmctl add PREFIX --size S' there), "
                          "which reaches a running guest by hot-plug (docs/layout.md, \"Adding a piece\")");
  }
  const std::string& prefix = scan_->prefix;
  if (wanted.ring) {
    return make_error(Errc::invalid_argument, prefix + ": the pieces of a split region hold logs, not rings");
  }
  if (!is_power_of_two(wanted.capacity) || wanted.capacity < uint64_t{2} * IVSHMFS_PAGE_SIZE) {
    return make_error(Errc::invalid_argument,
                      prefix + ": piece size " + std::to_string(wanted.capacity) +
                          " is not a power of two of at least 8K: each piece becomes a PCI BAR, whose size is a "
                          "power of two (e.g. --size 1M)");
  }
  if (auto r = refresh_table(); !r) return std::move(r).error();
  auto taken = [&](uint32_t id) {
    struct stat st {};
    return find(id) != nullptr || ::stat(split_piece_path(prefix, id).c_str(), &st) == 0;
  };
  uint32_t id = 0;
  if (wanted.id) {
    id = *wanted.id;
    if (id >= IVSHMFS_MAX_PARTITIONS) {
      return make_error(Errc::invalid_argument, "partition id " + std::to_string(id) + " is out of range 0.." +
                                                    std::to_string(IVSHMFS_MAX_PARTITIONS - 1));
    }
    if (taken(id)) {
      return make_error(Errc::already_formatted,
                        split_piece_path(prefix, id) + ": partition " + std::to_string(id) + " exists already");
    }
  } else {
    while (id < IVSHMFS_MAX_PARTITIONS && taken(id)) ++id;
    if (id == IVSHMFS_MAX_PARTITIONS) {
      return make_error(Errc::no_space, prefix + ": every partition id (0.." +
                                            std::to_string(IVSHMFS_MAX_PARTITIONS - 1) + ") has a piece");
    }
  }
  const std::string path = split_piece_path(prefix, id);
  // Formatted under another name, then linked into place: a peer scanning
  // the directory sees either no piece or a complete one, and two adders of
  // one id cannot both win (link fails on an existing name).
  const std::string temporary = path + ".new-" + std::to_string(::getpid());
  {
    auto backend = Backend::open(temporary, BackendOptions{true, true, wanted.capacity});
    if (!backend) return std::move(backend).error();
    if ((*backend)->size() != wanted.capacity) {
      (*backend)->remove_if_created();
      return make_error(Errc::size_mismatch, temporary + ": a file of another size is in the way; remove it");
    }
    FormatOptions options;
    options.partitions = 1;
    options.force = true;
    options.split_pieces = info_.split_pieces;
    options.piece_id = id;
    options.format_id = info_.format_id;
    if (auto r = format(**backend, options); !r) {
      (*backend)->remove_if_created();
      return r.error();
    }
    // The region's format time, as in the pieces formatted with it. Nobody
    // maps the file yet.
    auto* header = reinterpret_cast<ivshmfs_header*>((*backend)->bytes().data());
    store_relaxed(header->format_time_ns, info_.format_time_ns);
  }
  if (::link(temporary.c_str(), path.c_str()) != 0) {
    Error e = errno == EEXIST ? make_error(Errc::already_formatted,
                                           path + ": another peer added partition " + std::to_string(id) + " just now")
                              : make_sys_error(path + ": cannot link the new piece into place");
    ::unlink(temporary.c_str());
    return e;
  }
  ::unlink(temporary.c_str());
  scan_->seen_stamp.store(-1, std::memory_order_relaxed);
  if (auto r = refresh_table(); !r) return std::move(r).error();
  const PartitionInfo* added = find(id);
  if (added == nullptr) return make_error(Errc::io_error, path + ": created, but it was not taken in (see the log)");
  return *added;
}

Result<void> Region::remove_piece(uint32_t id, const LivenessPolicy& policy) {
  if (!scan_ || scan_->prefix.empty()) {
    return make_error(Errc::invalid_argument, path_ +
                                                  ": a split region loses a piece on the host ('ivshmctl remove "
                                                  "PREFIX --id N' there; unplug its device from the guests)");
  }
  if (auto r = refresh_table(); !r) return std::move(r).error();
  const PartitionInfo* p = find(id);
  if (p == nullptr) return no_partition(*this, id);
  auto st = stat(id, policy);
  if (!st) return std::move(st).error();
  if (st->claimed && st->alive) {
    return make_error(Errc::claimed, path_ + ": partition " + std::to_string(id) + " has a live owner (pid " +
                                         std::to_string(st->owner_pid) + "): stop it first");
  }
  const std::string path = split_piece_path(scan_->prefix, id);
  const Piece& piece = pieces_[p->piece];
  struct stat file {};
  if (::stat(path.c_str(), &file) != 0 || static_cast<uint64_t>(file.st_dev) != piece.device ||
      static_cast<uint64_t>(file.st_ino) != piece.inode) {
    return make_error(Errc::busy, path + ": the piece changed while it was being removed; try again");
  }
  if (::unlink(path.c_str()) != 0) return make_sys_error(path + ": cannot remove the piece");
  scan_->seen_stamp.store(-1, std::memory_order_relaxed);
  if (auto r = refresh_table(); !r) return std::move(r).error();
  return {};
}

}  // namespace ivshmfs
