// SPDX-License-Identifier: MIT
#include "partition_table.hpp"

#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include <spdlog/spdlog.h>

#include "ivshmfs/identity.hpp"
#include "shared.hpp"

namespace ivshmfs::detail {

namespace {

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// The table's words: entry `slot` is four naturally aligned 64-bit words
// (id and flags share word 0: id in its low half, little-endian).
uint64_t* entry_words(std::byte* base, uint32_t slot) noexcept {
  return reinterpret_cast<uint64_t*>(base + sizeof(ivshmfs_header) + uint64_t{slot} * sizeof(ivshmfs_partition_entry));
}

ivshmfs_header* header_of(std::byte* base) noexcept { return reinterpret_cast<ivshmfs_header*>(base); }

uint64_t now_ms() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000ULL + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000ULL;
}

// A lock word older than IVSHMFS_TABLE_LOCK_STALE_MS, or from more than a
// minute in the future (a clock far ahead, or garbage), may be broken.
bool lock_is_stale(uint64_t token, uint64_t now) noexcept {
  const uint64_t taken = token >> IVSHMFS_TABLE_LOCK_TIME_SHIFT;
  if (taken > now) return taken - now > 60'000;
  return now - taken > IVSHMFS_TABLE_LOCK_STALE_MS;
}

constexpr int kCopyAttempts = 1000;
constexpr auto kLockWait = std::chrono::milliseconds(IVSHMFS_TABLE_LOCK_STALE_MS + 1000);

}  // namespace

Result<std::vector<PartitionInfo>> check_table(const std::string& path, const ivshmfs_header& h,
                                               std::span<const ivshmfs_partition_entry> table, uint64_t size,
                                               std::vector<std::string>* skipped) {
  const bool live = (h.features & IVSHMFS_FEATURE_LIVE_TABLE) != 0;
  std::vector<PartitionInfo> out;
  std::array<bool, IVSHMFS_MAX_PARTITIONS> used{};
  const uint32_t known_flags =
      IVSHMFS_PARTITION_RING | (live ? IVSHMFS_PARTITION_LIVE | IVSHMFS_PARTITION_SERIAL_MASK : 0);
  for (uint32_t i = 0; i < table.size(); ++i) {
    const ivshmfs_partition_entry& e = table[i];
    std::optional<Error> bad;
    auto fail = [&](const std::string& what) {
      bad = make_error(Errc::corrupt_partition_table,
                       path + ": corrupt partition table: entry " + std::to_string(i) + ": " + what);
    };
    const bool ring = (e.flags & IVSHMFS_PARTITION_RING) != 0;
    uint64_t end = 0;
    if (e.control_offset != h.control_offset + uint64_t{i} * sizeof(ivshmfs_control)) {
      fail("control_offset " + hex(e.control_offset) + " is not control block " + std::to_string(i));
    } else if (live && (e.flags & IVSHMFS_PARTITION_LIVE) == 0) {
      continue;  // a free slot: nothing else of it is read
    } else if (e.id >= IVSHMFS_MAX_PARTITIONS) {
      fail("id " + std::to_string(e.id) + " is out of range");
    } else if (used[e.id]) {
      fail("id " + std::to_string(e.id) + " is used twice");
    } else if ((e.flags & ~known_flags) != 0) {
      fail("unknown flags " + hex(e.flags));
    } else if (ring && !live && (h.features & IVSHMFS_FEATURE_RING) == 0) {
      fail("flag ring (" + hex(e.flags) + ") without the ring feature bit in the header");
    } else if (e.data_offset % IVSHMFS_PAGE_SIZE != 0 || e.data_offset < h.data_offset) {
      fail("data_offset " + hex(e.data_offset) + " is misaligned or inside the metadata");
    } else if (e.capacity < IVSHMFS_MIN_CAPACITY || e.capacity % IVSHMFS_PAGE_SIZE != 0) {
      fail("capacity " + std::to_string(e.capacity) + " is not a positive multiple of the page size");
    } else if (__builtin_add_overflow(e.data_offset, e.capacity, &end) || end > size) {
      fail("data area " + hex(e.data_offset) + "+" + hex(e.capacity) + " lies past the end of the region");
    } else {
      for (const PartitionInfo& p : out) {
        if (e.data_offset < p.data_offset + p.capacity && p.data_offset < end) {
          const uint32_t a = std::min(p.id, e.id);
          const uint32_t b = std::max(p.id, e.id);
          bad = make_error(Errc::corrupt_partition_table,
                           path + ": corrupt partition table: data areas of partitions " + std::to_string(a) + " and " +
                               std::to_string(b) + " overlap");
          break;
        }
      }
    }
    if (bad) {
      if (!live || skipped == nullptr) return *bad;
      skipped->push_back(bad->message + "; the entry is left out");
      continue;
    }
    used[e.id] = true;
    PartitionInfo p{e.id, i, 0, e.control_offset, e.data_offset, e.capacity, ring};
    p.serial = live ? entry_serial(e.flags) : 0;
    out.push_back(p);
  }
  if (!live && (h.features & IVSHMFS_FEATURE_RING) != 0 &&
      std::none_of(out.begin(), out.end(), [](const PartitionInfo& p) { return p.ring; })) {
    return make_error(Errc::corrupt_header,
                      path + ": corrupt header: feature bit ring is set but no partition is a ring");
  }
  return out;
}

uint64_t load_table_seq(std::byte* base) noexcept { return load_acquire(header_of(base)->table_seq); }

TableCopy copy_live_table(std::byte* base, uint32_t slots) noexcept {
  TableCopy copy;
  copy.entries.resize(slots);
  for (int attempt = 0; attempt < kCopyAttempts; ++attempt) {
    const uint64_t seq = load_acquire(header_of(base)->table_seq);
    for (uint32_t i = 0; i < slots; ++i) {
      uint64_t* w = entry_words(base, i);
      const uint64_t w0 = load_relaxed(w[0]);
      copy.entries[i].id = static_cast<uint32_t>(w0);
      copy.entries[i].flags = static_cast<uint32_t>(w0 >> 32);
      copy.entries[i].control_offset = load_relaxed(w[1]);
      copy.entries[i].data_offset = load_relaxed(w[2]);
      copy.entries[i].capacity = load_relaxed(w[3]);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    copy.seq = seq;
    if (seq % 2 == 0 && load_relaxed(header_of(base)->table_seq) == seq) {
      copy.consistent = true;
      return copy;
    }
    if (attempt > 16) std::this_thread::yield();
  }
  return copy;
}

void begin_change(std::byte* base) noexcept {
  uint64_t& seq = header_of(base)->table_seq;
  const uint64_t s = load_relaxed(seq);
  store_relaxed(seq, s | 1);  // odd: an entry changes
  std::atomic_thread_fence(std::memory_order_release);
}

void end_change(std::byte* base) noexcept {
  uint64_t& seq = header_of(base)->table_seq;
  const uint64_t s = load_relaxed(seq);
  store_release(seq, (s | 1) + 1);  // even again, and 2 past the last stable value
}

void write_entry(std::byte* base, uint32_t slot, const ivshmfs_partition_entry& e) noexcept {
  uint64_t* w = entry_words(base, slot);
  store_relaxed(w[1], e.control_offset);
  store_relaxed(w[2], e.data_offset);
  store_relaxed(w[3], e.capacity);
  store_relaxed(w[0], uint64_t{e.id} | (uint64_t{e.flags} << 32));
}

void clear_control(std::byte* base, uint64_t control_offset) noexcept {
  auto* words = reinterpret_cast<uint64_t*>(base + control_offset);
  for (std::size_t i = 0; i < sizeof(ivshmfs_control) / sizeof(uint64_t); ++i) store_relaxed(words[i], 0);
  std::atomic_thread_fence(std::memory_order_release);
}

namespace {

// After breaking a dead changer's lock: the entry it was changing may be
// half written. Every live entry that does not check out is freed, and the
// seqlock made even again.
void repair_table(std::byte* base, const std::string& path, const ivshmfs_header& h, uint64_t size) {
  if (load_acquire(header_of(base)->table_seq) % 2 == 0) return;
  TableCopy copy = copy_live_table(base, h.partition_count);
  std::vector<std::string> skipped;
  auto good = check_table(path, h, copy.entries, size, &skipped);
  for (uint32_t i = 0; i < copy.entries.size(); ++i) {
    const ivshmfs_partition_entry& e = copy.entries[i];
    if ((e.flags & IVSHMFS_PARTITION_LIVE) == 0) continue;
    const bool kept =
        good && std::any_of(good->begin(), good->end(), [&](const PartitionInfo& p) { return p.index == i; });
    if (kept) continue;
    ivshmfs_partition_entry cleared{};
    cleared.flags = e.flags & IVSHMFS_PARTITION_SERIAL_MASK;
    cleared.control_offset = h.control_offset + uint64_t{i} * sizeof(ivshmfs_control);
    write_entry(base, i, cleared);
    spdlog::warn("{}: partition table slot {} was left half written by a changer that died; freed", path, i);
  }
  end_change(base);
}

}  // namespace

Result<uint64_t> lock_table(std::byte* base, const std::string& path, const ivshmfs_header& h, uint64_t size) {
  uint64_t& lock = header_of(base)->table_lock;
  const auto deadline = std::chrono::steady_clock::now() + kLockWait;
  for (;;) {
    const uint64_t now = now_ms();
    uint64_t random = 0;
    while (random == 0) random = random_nonzero() & ((uint64_t{1} << IVSHMFS_TABLE_LOCK_TIME_SHIFT) - 1);
    const uint64_t token = (now << IVSHMFS_TABLE_LOCK_TIME_SHIFT) | random;
    uint64_t current = 0;
    if (compare_exchange(lock, current, token)) {
      repair_table(base, path, h, size);  // a hostile peer may have left the seqlock odd
      return token;
    }
    if (lock_is_stale(current, now) && compare_exchange(lock, current, token)) {
      spdlog::warn("{}: broke a stale partition table lock (taken {} ms ago): its holder died in a change", path,
                   now - std::min(now, current >> IVSHMFS_TABLE_LOCK_TIME_SHIFT));
      repair_table(base, path, h, size);
      return token;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return make_error(Errc::busy, path + ": the partition table stays locked by another changer (lock word " +
                                        hex(current) + "); try again");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void unlock_table(std::byte* base, uint64_t token) noexcept {
  uint64_t expected = token;
  compare_exchange(header_of(base)->table_lock, expected, 0);
}

bool holds_table_lock(std::byte* base, uint64_t token) noexcept {
  return load_acquire(header_of(base)->table_lock) == token;
}

}  // namespace ivshmfs::detail

namespace ivshmfs {

namespace {
// Versions of the table one region keeps (every one stays valid while the
// region lives, so references into it never dangle): a peer that rewrites
// the table faster than this is refused once the limit is reached.
constexpr std::size_t kMaxTableVersions = 4096;
}  // namespace

void Region::publish(std::vector<PartitionInfo> partitions) {
  auto t = std::make_unique<Table>();
  t->index_by_id.fill(-1);
  for (std::size_t i = 0; i < partitions.size(); ++i) t->index_by_id[partitions[i].id] = static_cast<int16_t>(i);
  t->partitions = std::move(partitions);
  table_.store(t.get(), std::memory_order_release);
  tables_.push_back(std::move(t));
}

Result<TableChange> Region::refresh_table() {
  if (scan_) return rescan_pieces();
  if (!live_table()) return TableChange{};
  std::byte* base = pieces_.front().base;
  if (detail::load_table_seq(base) == seen_seq_.load(std::memory_order_relaxed)) [[likely]]
    return TableChange{};
  std::lock_guard lock(tables_mutex_);
  detail::TableCopy copy = detail::copy_live_table(base, header_.partition_count);
  if (!copy.consistent) {
    return make_error(Errc::busy, path_ +
                                      ": the partition table keeps changing (its seqlock stays odd); the "
                                      "table seen before is kept");
  }
  if (copy.seq == seen_seq_.load(std::memory_order_relaxed)) return TableChange{};
  if (pieces_.front().backend->mapping_lost()) return pieces_.front().backend->loss_error();
  std::vector<std::string> skipped;
  auto rows = detail::check_table(path_, header_, copy.entries, pieces_.front().backend->size(), &skipped);
  if (!rows) return std::move(rows).error();
  for (const std::string& why : skipped) spdlog::warn("{}", why);
  TableChange change;
  const std::vector<PartitionInfo>& before = table()->partitions;
  for (const PartitionInfo& p : *rows) {
    if (std::none_of(before.begin(), before.end(), [&](const PartitionInfo& q) { return same_partition(p, q); }))
      change.added.push_back(p);
  }
  for (const PartitionInfo& q : before) {
    if (std::none_of(rows->begin(), rows->end(), [&](const PartitionInfo& p) { return same_partition(p, q); }))
      change.removed.push_back(q);
  }
  seen_seq_.store(copy.seq, std::memory_order_relaxed);
  change.changed = !change.added.empty() || !change.removed.empty();
  if (!change.changed) return change;
  if (tables_.size() >= kMaxTableVersions) {
    return make_error(Errc::busy, path_ + ": the partition table changed more than " +
                                      std::to_string(kMaxTableVersions) +
                                      " times since it was opened; the table seen before is kept (open it again)");
  }
  for (const PartitionInfo& p : change.removed) spdlog::info("{}: partition {} was removed", path_, p.id);
  for (const PartitionInfo& p : change.added) {
    spdlog::info("{}: partition {} was added ({}{})", path_, p.id, format_size(p.capacity), p.ring ? ", a ring" : "");
  }
  publish(std::move(rows).value());
  return change;
}

template <typename Change>
auto Region::change_table(Change&& change) -> decltype(change()) {
  const std::string& path = pieces_.front().backend->path();
  if (!live_table()) {
    return make_error(Errc::invalid_argument,
                      path + ": its partition table is fixed (format it with --slots to add partitions later)");
  }
  if (!pieces_.front().backend->writable()) return make_error(Errc::read_only, path + ": mapped read-only");
  if (auto r = check_format(); !r) return std::move(r).error();
  std::byte* base = pieces_.front().base;
  auto token = detail::lock_table(base, path, header_, pieces_.front().backend->size());
  if (!token) return std::move(token).error();
  auto result = change();
  detail::unlock_table(base, *token);
  if (auto r = refresh_table(); !r) spdlog::warn("{}", r.error().message);
  return result;
}

FreeSpace Region::free_space() const {
  FreeSpace out;
  if (!live_table()) return out;
  std::vector<PartitionInfo> used = partitions();
  std::sort(used.begin(), used.end(),
            [](const PartitionInfo& a, const PartitionInfo& b) { return a.data_offset < b.data_offset; });
  out.free_slots = header_.partition_count - static_cast<uint32_t>(used.size());
  uint64_t at = header_.data_offset;
  const uint64_t end = pieces_.front().backend->size() / IVSHMFS_PAGE_SIZE * IVSHMFS_PAGE_SIZE;
  auto gap = [&](uint64_t until) {
    if (until > at) {
      out.total += until - at;
      out.largest = std::max(out.largest, until - at);
    }
  };
  for (const PartitionInfo& p : used) {
    gap(p.data_offset);
    at = std::max(at, p.data_offset + p.capacity);
  }
  gap(end);
  if (out.free_slots == 0) out.largest = 0;
  return out;
}

Result<PartitionInfo> Region::add_partition(const NewPartition& wanted) {
  if (split()) return add_piece(wanted);
  const std::string& path = pieces_.front().backend->path();
  if (wanted.capacity < IVSHMFS_MIN_CAPACITY || wanted.capacity % IVSHMFS_PAGE_SIZE != 0) {
    return make_error(Errc::invalid_argument, path + ": size " + std::to_string(wanted.capacity) +
                                                  " is not a positive multiple of the page size (" +
                                                  std::to_string(IVSHMFS_PAGE_SIZE) + " bytes)");
  }
  if (wanted.id && *wanted.id >= IVSHMFS_MAX_PARTITIONS) {
    return make_error(Errc::invalid_argument, path + ": partition id " + std::to_string(*wanted.id) +
                                                  " is out of range 0.." + std::to_string(IVSHMFS_MAX_PARTITIONS - 1));
  }
  uint32_t added_id = 0;
  auto r = change_table([&]() -> Result<void> {
    std::byte* base = pieces_.front().base;
    const uint64_t size = pieces_.front().backend->size();
    detail::TableCopy copy = detail::copy_live_table(base, header_.partition_count);
    std::vector<std::string> skipped;
    auto rows = detail::check_table(path, header_, copy.entries, size, &skipped);
    if (!rows) return std::move(rows).error();
    std::array<bool, IVSHMFS_MAX_PARTITIONS> taken{};
    for (const PartitionInfo& p : *rows) taken[p.id] = true;
    if (wanted.id) {
      if (taken[*wanted.id]) {
        return make_error(Errc::claimed, path + ": partition " + std::to_string(*wanted.id) +
                                             " exists ('ivshmctl remove --id " + std::to_string(*wanted.id) +
                                             "' frees it once no live owner holds it)");
      }
      added_id = *wanted.id;
    } else {
      const auto* it = std::find(taken.begin(), taken.end(), false);
      if (it == taken.end()) return make_error(Errc::no_space, path + ": every partition id is in use");
      added_id = static_cast<uint32_t>(it - taken.begin());
    }
    // The lowest slot whose entry is not live (a bad live entry keeps its slot).
    std::optional<uint32_t> slot;
    for (uint32_t i = 0; i < copy.entries.size() && !slot; ++i) {
      if ((copy.entries[i].flags & IVSHMFS_PARTITION_LIVE) == 0) slot = i;
    }
    if (!slot) {
      return make_error(Errc::no_space, path + ": all " + std::to_string(header_.partition_count) +
                                            " partition table slots are in use (remove a partition, or format with "
                                            "more --slots)");
    }
    // First fit over the page-aligned gaps between live data areas.
    std::vector<PartitionInfo> used = *rows;
    std::sort(used.begin(), used.end(),
              [](const PartitionInfo& a, const PartitionInfo& b) { return a.data_offset < b.data_offset; });
    uint64_t at = header_.data_offset;
    std::optional<uint64_t> place;
    uint64_t largest = 0;
    const uint64_t end = size / IVSHMFS_PAGE_SIZE * IVSHMFS_PAGE_SIZE;
    for (std::size_t i = 0; i <= used.size() && !place; ++i) {
      const uint64_t until = i < used.size() ? used[i].data_offset : end;
      if (until > at && until - at >= wanted.capacity) place = at;
      if (until > at) largest = std::max(largest, until - at);
      if (i < used.size()) at = std::max(at, used[i].data_offset + used[i].capacity);
    }
    if (!place) {
      return make_error(Errc::no_space, path + ": no free extent holds " + format_size(wanted.capacity) +
                                            " (the largest is " + format_size(largest) + ")");
    }
    const ivshmfs_partition_entry& old = copy.entries[*slot];
    ivshmfs_partition_entry e{};
    e.id = added_id;
    const uint32_t serial = (detail::entry_serial(old.flags) + 1) & 0xffff;
    e.flags = IVSHMFS_PARTITION_LIVE | (wanted.ring ? IVSHMFS_PARTITION_RING : 0) |
              (serial << IVSHMFS_PARTITION_SERIAL_SHIFT);
    e.control_offset = header_.control_offset + uint64_t{*slot} * sizeof(ivshmfs_control);
    e.data_offset = *place;
    e.capacity = wanted.capacity;
    // A fresh control block before the entry is published: empty, unclaimed.
    detail::clear_control(base, e.control_offset);
    detail::begin_change(base);
    detail::write_entry(base, *slot, e);
    detail::end_change(base);
    return {};
  });
  if (!r) return std::move(r).error();
  const PartitionInfo* p = find(added_id);
  if (p == nullptr) {
    return make_error(Errc::busy, path + ": partition " + std::to_string(added_id) +
                                      " was added but is not in the table any more (removed at once by a peer?)");
  }
  return *p;
}

Result<void> Region::remove_partition(uint32_t id, const LivenessPolicy& policy) {
  if (split()) return remove_piece(id, policy);
  const std::string& path = pieces_.front().backend->path();
  return change_table([&]() -> Result<void> {
    if (auto r = refresh_table(); !r) return std::move(r).error();  // the table is stable: we hold its lock
    const PartitionInfo* p = find(id);
    if (p == nullptr) return make_error(Errc::no_such_partition, path + ": no partition " + std::to_string(id));
    auto st = stat(id, policy);
    if (!st) return std::move(st).error();
    if (st->claimed && st->alive) {
      return make_error(Errc::claimed, path + ": partition " + std::to_string(id) +
                                           " is claimed by a live owner (pid " + std::to_string(st->owner_pid) +
                                           "); unmount it first, or wait until its claim is stale");
    }
    std::byte* base = pieces_.front().base;
    ivshmfs_partition_entry e{};
    e.flags = p->serial << IVSHMFS_PARTITION_SERIAL_SHIFT;
    e.control_offset = p->control_offset;
    detail::begin_change(base);
    detail::write_entry(base, p->index, e);
    detail::end_change(base);
    // A stale owner that wakes up finds its claim gone and never publishes.
    detail::store_release(control(*p)->owner_token, 0);
    return {};
  });
}

}  // namespace ivshmfs
