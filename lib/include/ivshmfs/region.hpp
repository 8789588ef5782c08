// SPDX-License-Identifier: MIT
// The shared region: a validated private copy of its header, and the
// operations every peer may perform on it (read, stat). Writing is the
// owner's business: see writer.hpp.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ivshmfs/backend.hpp"
#include "ivshmfs/error.hpp"
#include "ivshmfs/layout.h"

namespace ivshmfs {

// One partition's wishes at format time (see FormatOptions::layout).
struct PartitionLayout {
  uint32_t id = 0;
  uint64_t capacity = 0;  // bytes, a page multiple; 0: an equal share of what the sized ones leave
  bool ring = false;      // keep the newest `capacity` bytes instead of filling up
};

struct FormatOptions {
  uint32_t partitions = 4;  // 1 .. IVSHMFS_MAX_PARTITIONS; ids 0 .. partitions-1
  bool force = false;       // overwrite a region that already holds a valid header
  // Non-zero: format the backend as piece `piece_id` of a split region of
  // `split_pieces` pieces whose identity is `format_id` (see
  // Region::format_split); `partitions` must then be 1.
  uint32_t split_pieces = 0;
  uint32_t piece_id = 0;
  uint64_t format_id = 0;
  bool ring = false;  // every partition is a ring
  // Per-partition sizes and ring flags, at most one entry per id (< partitions).
  // Partitions without a size share the rest of the region equally.
  std::vector<PartitionLayout> layout{};
  // Non-zero: a live partition table of this many slots (>= partitions, <=
  // IVSHMFS_MAX_PARTITIONS): partitions may be added and removed while the
  // region is in use (Region::add_partition). Partitions without a size then
  // get an equal share as if every slot held one, unless `free_bytes` is set.
  uint32_t slots = 0;
  // With slots: bytes of the data area left unassigned at format (rounded
  // down to pages); the partitions without a size share the rest.
  std::optional<uint64_t> free_bytes{};
};

// The file of piece `id` of the split region `prefix`: PREFIX.vmID.
std::string split_piece_path(std::string_view prefix, uint32_t id);

// How to open a region by path (see Region::open_path).
struct RegionOpenOptions {
  bool writable = false;     // map read-write (needed to append or format)
  bool create = false;       // create a missing host file and format a blank region
  uint64_t create_size = 0;  // size of a created file
  uint32_t create_partitions = 4;
  // Called while a created file is being allocated: (bytes done, bytes in all).
  std::function<void(uint64_t, uint64_t)> progress{};
  // Split regions: the partition this peer owns. With `writable`, only its
  // piece is opened read-write and every other piece O_RDONLY/PROT_READ;
  // without an own id, `writable` opens every piece read-write (the host's
  // administration). Ignored for a single-file region.
  std::optional<uint32_t> own_id{};
};

// One row of the (validated) partition table.
struct PartitionInfo {
  uint32_t id = 0;
  uint32_t index = 0;  // position in the table (in the region's partitions())
  uint32_t piece = 0;  // the backend it lives in (always 0 in a single-file region)
  // Offsets are from the start of its piece.
  uint64_t control_offset = 0;
  uint64_t data_offset = 0;
  uint64_t capacity = 0;
  bool ring = false;    // IVSHMFS_PARTITION_RING: keeps the newest capacity bytes
  uint32_t serial = 0;  // live tables: how many partitions this slot held (tells a re-added id from the old)
};

// Whether two rows describe the same partition (not one removed and another
// added in its place).
inline bool same_partition(const PartitionInfo& a, const PartitionInfo& b) noexcept {
  return a.id == b.id && a.index == b.index && a.piece == b.piece && a.data_offset == b.data_offset &&
         a.capacity == b.capacity && a.ring == b.ring && a.serial == b.serial;
}

// What Region::refresh_table found.
struct TableChange {
  bool changed = false;
  std::vector<PartitionInfo> added;    // new rows (a re-added id is in both lists)
  std::vector<PartitionInfo> removed;  // rows that are gone
};

// A partition to add to a live table, or a piece to add to a split region
// (Region::add_partition).
struct NewPartition {
  std::optional<uint32_t> id{};  // none: the lowest id no partition (no piece file) has
  // Live table: bytes, a page multiple >= IVSHMFS_MIN_CAPACITY. Split
  // region: the new piece's size, a power of two >= 8K (a PCI BAR); the
  // partition gets all of it but its first page.
  uint64_t capacity = 0;
  bool ring = false;  // live tables only
};

// The unassigned data area of a live table.
struct FreeSpace {
  uint32_t free_slots = 0;
  uint64_t total = 0;    // bytes in all free extents
  uint64_t largest = 0;  // the largest partition that can be added now
};

struct RegionInfo {
  uint32_t version = 0;
  uint64_t region_size = 0;  // bytes of all pieces together
  uint64_t format_id = 0;
  uint64_t format_time_ns = 0;
  uint32_t partition_count = 0;  // partitions this peer opened (a split region may miss pieces)
  uint64_t data_offset = 0;
  uint32_t split_pieces = 0;  // 0: one backend holds the region; else pieces at format
  uint64_t features = 0;      // IVSHMFS_FEATURE_* bits
  uint32_t table_slots = 0;   // a partition's index is below this (a live table: its slot count)
};

// When an owner counts as alive.
struct LivenessPolicy {
  // A claim whose heartbeat is older than this is stale and may be taken over.
  std::chrono::milliseconds stale_after{5000};
};

// The data-path facts of a partition, from one consistent load: cheap
// enough for every getattr and every poll.
struct PartitionSnapshot {
  uint64_t length = 0;  // the file's bytes, clamped to capacity (a ring: all written since the reset)
  uint64_t generation = 0;
  uint64_t last_write_ns = 0;
  uint64_t free = 0;  // room left for appends: capacity less the file and any fenced range (a ring: capacity)
  // A ring: the file offset of the oldest byte still retained; the bytes
  // below it were overwritten (lost to a reader that had not read them).
  // Always 0 for a log partition.
  uint64_t retained_from = 0;
};

struct PartitionStat {
  uint32_t id = 0;
  uint64_t length = 0;  // the file's bytes (published, less the fenced hole; a ring: written since the reset)
  uint64_t capacity = 0;
  bool ring = false;
  uint64_t retained_from = 0;  // a ring: file offset of the oldest retained byte (= bytes overwritten)
  uint64_t generation = 0;     // even; grows at every reset (by 2 when the owner resets)
  uint64_t last_write_ns = 0;
  // The generation stayed odd (a reset half done, its owner stopped or dead):
  // length and generation are then unsettled; the next claim finishes it.
  bool mid_reset = false;
  bool claimed = false;
  bool alive = false;  // claimed, and the owner is heartbeating
  uint64_t owner_pid = 0;
  uint64_t owner_since_ns = 0;
  uint64_t owner_heartbeat_ns = 0;
  bool owner_local = false;       // the owner runs on this system (same boot id)
  uint64_t owner_pid_ns = 0;      // inode of the owner's PID namespace; 0: unknown
  uint64_t owner_start_time = 0;  // the owner process's start time (clock ticks after boot); 0: unknown
  // Proven gone: same boot and PID namespace as the caller, and the process
  // with that pid and start time no longer runs. Never guessed: an owner in
  // another namespace or on another system is judged by its heartbeat alone.
  bool owner_dead = false;
  // The raw positions (absolute bytes; see docs/layout.md), unvalidated.
  uint64_t head = 0;
  uint64_t base = 0;
  uint64_t reserve_end = 0;
  uint64_t hole_offset = 0;
  uint64_t hole_length = 0;  // bytes fenced off by a takeover, never shown
  // Derived, validated: the hole's bytes (0 if none or it does not fit) and
  // the room left for appends (capacity less the file and the hole).
  uint64_t fenced = 0;
  uint64_t free = 0;
};

// A consistent view of committed bytes, straight from the mapping. The bytes
// stay valid while generation_unchanged() holds (committed bytes never
// change until a reset). Used by zero-copy readers.
struct ReadView {
  std::span<const std::byte> bytes;
  uint64_t generation = 0;
};

class Region {
 public:
  // Formats the backend as a fresh region (new format id, every partition
  // empty and unclaimed). Refuses a region with a valid header unless force.
  static Result<void> format(Backend& backend, const FormatOptions& options);

  // Validates the header and partition table (copied once into private
  // memory) and returns the region. Never reads outside the mapping.
  static Result<std::shared_ptr<Region>> open(std::unique_ptr<Backend> backend);
  // Opens the pieces of one split region (each validated as open() does):
  // all must carry IVSHMFS_FEATURE_SPLIT, the same format id, version and
  // piece count, and distinct partition ids. `name` names the region in
  // messages (the prefix on the host). Pieces missing from the list are
  // logged; the region has the partitions of the pieces given.
  static Result<std::shared_ptr<Region>> open_pieces(std::vector<std::unique_ptr<Backend>> backends, std::string name);
  // Formats a split region: creates (or reuses, with `force`) the files
  // PREFIX.vm0 .. PREFIX.vm{partitions-1}, each `piece_size` bytes (a power
  // of two: a PCI BAR), each one piece with the same new format id. Refuses
  // before writing anything when a piece holds data and `force` is not set,
  // or when a piece of another size exists; with `force`, pieces numbered
  // past `partitions` (from an older format) are removed.
  static Result<void> format_split(std::string_view prefix, uint32_t partitions, uint64_t piece_size, bool force);
  // Inside a guest, with no backend named: every ivshmem device
  // (find_all_backends()). When none holds a piece of a split region, the
  // first device is opened as a single-file region. Otherwise the pieces are
  // grouped by format id (devices of two split regions are refused, naming
  // them) and opened as one region: with `writable`, the own piece read-write
  // and every other piece read-only (PROT_READ, whatever the device allows).
  // The own piece is `own_id`, else the only piece whose probe write reads
  // back; either way the probe must read back, or the error names the device
  // and the QEMU option at fault (readonly=on on its memory-backend-file).
  // `chosen` (if not null) receives the own id when the probe found it.
  static Result<std::shared_ptr<Region>> discover(std::optional<uint32_t> own_id, bool writable,
                                                  std::optional<uint32_t>* chosen = nullptr);
  // Whether `path` names a split region: no file at `path`, but PREFIX.vmN
  // pieces.
  static bool is_split_prefix(std::string_view path);
  // Opens the backend at `path` and then the region. With `create`, a missing
  // host file is created and a blank region (its whole header area zero, as
  // in a new sparse file) is formatted; a region holding anything else is
  // never overwritten: a missing magic with other bytes set, a bad magic or
  // another version is reported. A file created here is removed again if
  // formatting fails. Without `writable` the backend is opened and mapped
  // read-only (also after a create, which needs write access). A path with
  // no file of its own but PREFIX.vmN files is a split region: its pieces
  // are opened (see RegionOpenOptions::own_id).
  static Result<std::shared_ptr<Region>> open_path(std::string_view path, const RegionOpenOptions& options);

  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();

  // partition_count is that of the current table.
  [[nodiscard]] RegionInfo info() const noexcept {
    RegionInfo i = info_;
    i.partition_count = static_cast<uint32_t>(table()->partitions.size());
    i.region_size = region_size_.load(std::memory_order_relaxed);
    return i;
  }
  // The partition table as this peer last saw it (see refresh_table). The
  // references and pointers it hands out stay valid while the region lives,
  // also after the table changed: they then describe a partition as it was.
  [[nodiscard]] const std::vector<PartitionInfo>& partitions() const noexcept { return table()->partitions; }
  // nullptr when no partition has this id.
  [[nodiscard]] const PartitionInfo* find(uint32_t id) const noexcept;

  // Live partition tables (IVSHMFS_FEATURE_LIVE_TABLE; docs/layout.md).
  [[nodiscard]] bool live_table() const noexcept { return (info_.features & IVSHMFS_FEATURE_LIVE_TABLE) != 0; }
  // A split region opened by its prefix on the host (files PREFIX.vmN), or
  // found on /dev/ivshmN devices in a guest (discover): pieces may be added
  // and removed while it is open (refresh_table takes them in).
  [[nodiscard]] bool scans_pieces() const noexcept { return scan_ != nullptr; }
  // Whether partitions may come and go while the region is open (a live
  // table, or a split region whose pieces are scanned): refresh_table()
  // is then worth calling.
  [[nodiscard]] bool table_may_change() const noexcept { return live_table() || scans_pieces(); }
  // Takes in changes peers made to the table: one load when nothing changed.
  // Any thread. Bad entries are left out and logged. Not a live table:
  // never a change. A split region that scans its pieces: a stat of the
  // pieces' directory when nothing changed; after a change the pieces
  // (PREFIX.vm0..63, or every /dev/ivshmN) are looked at again: a new sound
  // piece of this region (same format id; on the host, its name's id) is
  // opened and added, a piece whose file is gone or replaced is removed (its
  // mapping is kept while the region lives, for the rows that still
  // describe it).
  Result<TableChange> refresh_table();
  // Whether refresh_table() would look at anything now: peers changed the
  // table since this peer last took it in. One load (a live table) or one
  // stat of the pieces' directory (a split region opened by its prefix); any
  // thread; takes nothing in.
  [[nodiscard]] bool table_moved() const noexcept;
  // Adds a partition (first fit over the free extents, the lowest free
  // slot) and returns it as the table now has it. Needs a writable mapping.
  // A split region opened by its prefix: creates the piece PREFIX.vmID (this
  // region's format id, formatted under a temporary name and linked into
  // place, so no peer ever sees it half written) and takes it in.
  Result<PartitionInfo> add_partition(const NewPartition& wanted);
  // Removes partition `id`, whose claim must be unclaimed or not alive
  // (Errc::claimed otherwise); its space and slot may then be reused. A
  // split region opened by its prefix: removes its piece file.
  Result<void> remove_partition(uint32_t id, const LivenessPolicy& policy = {});
  // Free slots and bytes of the current table (zero unless a live table).
  [[nodiscard]] FreeSpace free_space() const;
  // The region's name: its backend's path, or a split region's prefix.
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] bool split() const noexcept { return info_.split_pieces != 0; }
  // The backend holding partition p.
  [[nodiscard]] Backend& backend(const PartitionInfo& p) const noexcept { return *pieces_[p.piece].backend; }
  // Every backend of the region, in partition order (one for a single-file region).
  [[nodiscard]] std::vector<const Backend*> backends() const;
  // True once any piece's mapping lost its backing (see Backend::mapping_lost).
  [[nodiscard]] bool mapping_lost() const noexcept;
  // Backend::notice_shrink on every piece; true when any mapping is lost.
  bool notice_shrink() const noexcept;
  // The loss error of the first piece whose mapping is lost (EIO when none is).
  [[nodiscard]] Error loss_error() const;

  // Errc::reformatted once the region was formatted anew (or wiped) after open.
  // In a split region, another VM's piece (one this peer maps read-only)
  // formatted anew or damaged costs only its partition (logged once); the
  // own piece, or all pieces, end the region.
  [[nodiscard]] Result<void> check_format() const;

  // Copies committed bytes of partition `id` from `offset` into `out`; returns
  // how many (0 at or past the end). All from one generation: a read racing a
  // reset retries, and gives Errc::busy if it never gets a stable snapshot.
  // A ring: file offsets count every byte written since the reset; a read
  // that starts below the oldest retained byte, or whose bytes the writer
  // overwrote while they were copied, fails with Errc::overrun (nothing is
  // returned; snapshot().retained_from says where the retained bytes begin).
  Result<std::size_t> read(uint32_t id, uint64_t offset, std::span<std::byte> out,
                           uint64_t* generation = nullptr) const;
  // Committed bytes [offset, offset+max) as a view into the mapping. Not for
  // rings (Errc::invalid_argument): their bytes change without a reset.
  Result<ReadView> view(uint32_t id, uint64_t offset, std::size_t max) const;
  // True while no reset happened since `generation` was read.
  [[nodiscard]] bool generation_unchanged(uint32_t id, uint64_t generation) const noexcept;

  // Committed length (clamped), generation and last write in one consistent
  // load; no system call.
  Result<PartitionSnapshot> snapshot(uint32_t id) const;
  // The snapshot plus the owner's claim and whether it is alive (this may
  // read /proc to tell whether a local owner process still runs).
  Result<PartitionStat> stat(uint32_t id, const LivenessPolicy& policy = {}) const;

  // Doorbells: the owner of partition `own_id` announces in its control
  // block's waiting_for word which partition ids it has readers waiting for
  // (bit i: id i), then a full fence: a head loaded after it is ordered after
  // the announcement, so a writer that committed before missed nothing.
  [[nodiscard]] Result<void> announce_waiting(uint32_t own_id, uint64_t mask) const;
  // After a full fence (pairing with the one above, a commit loaded before it
  // is ordered before): what the owner of partition `id` waits for; 0 when
  // no partition has that id.
  [[nodiscard]] uint64_t waiting_for(uint32_t id) const noexcept;
  // For the writer and for polling: the live control block of a partition.
  // The pointer is into shared memory; access it only atomically.
  [[nodiscard]] ivshmfs_control* control(const PartitionInfo& p) const noexcept;
  [[nodiscard]] std::byte* data(const PartitionInfo& p) const noexcept;

 private:
  struct Piece {
    std::unique_ptr<Backend> backend;
    std::byte* base = nullptr;                   // backend->bytes().data(), one indirection less on every access
    std::unique_ptr<std::atomic<bool>> damaged;  // its header changed (logged once)
    std::unique_ptr<std::atomic<bool>> retired;  // removed from a split region (its mapping is kept)
    uint64_t device = 0;                         // the file's st_dev and st_ino (split rescans)
    uint64_t inode = 0;
  };
  // The pieces in the order they were opened. A split region's rescan adds
  // pieces while other threads read them: a fixed array whose count is
  // published after the new piece is filled in. Pieces are never taken out
  // (a removed one is retired), so a piece index stays valid for good.
  class PieceList {
   public:
    static constexpr std::size_t kCapacity = std::size_t{4} * IVSHMFS_MAX_PARTITIONS;
    PieceList() : pieces_(std::make_unique<Piece[]>(kCapacity)) {}
    [[nodiscard]] std::size_t size() const noexcept { return count_.load(std::memory_order_acquire); }
    [[nodiscard]] bool full() const noexcept { return size() == kCapacity; }
    Piece& operator[](std::size_t i) const noexcept { return pieces_[i]; }
    [[nodiscard]] Piece& front() const noexcept { return pieces_[0]; }
    [[nodiscard]] Piece* begin() const noexcept { return pieces_.get(); }
    [[nodiscard]] Piece* end() const noexcept { return pieces_.get() + size(); }
    // One thread at a time (open, or under tables_mutex_); not when full().
    void push_back(Piece&& piece) noexcept {
      const std::size_t n = count_.load(std::memory_order_relaxed);
      pieces_[n] = std::move(piece);
      count_.store(n + 1, std::memory_order_release);
    }

   private:
    std::unique_ptr<Piece[]> pieces_;
    std::atomic<std::size_t> count_{0};
  };
  // A split region opened by its prefix (host), or from every /dev/ivshmN
  // (a guest: prefix empty): where its pieces are looked for.
  struct PieceScan {
    std::string prefix;              // host: the files PREFIX.vmN; empty: the /dev/ivshmN devices
    std::string directory;           // whose modification time tells that a file came or went
    std::optional<uint32_t> own_id;  // its piece is opened read-write, the others read-only
    bool writable = false;           // no own id: every piece read-write (the host's administration)
    // The directory's modification time at the last scan; -1: scan again.
    std::atomic<int64_t> seen_stamp{-1};
    std::set<std::pair<uint64_t, uint64_t>> refused;  // files logged as unusable; guarded by tables_mutex_
  };
  Result<TableChange> rescan_pieces();
  Result<PartitionInfo> add_piece(const NewPartition& wanted);
  Result<void> remove_piece(uint32_t id, const LivenessPolicy& policy);
  [[nodiscard]] Result<void> check_piece(const Piece& piece) const;
  Region() = default;
  Result<std::size_t> read_ring(const PartitionInfo& p, uint64_t offset, std::span<std::byte> out,
                                uint64_t* generation) const;

  // One version of the partition table; never changed once published.
  struct Table {
    std::vector<PartitionInfo> partitions;
    std::array<int16_t, IVSHMFS_MAX_PARTITIONS> index_by_id{};  // -1: no such id
  };
  [[nodiscard]] const Table* table() const noexcept { return table_.load(std::memory_order_acquire); }
  void publish(std::vector<PartitionInfo> partitions);
  // Holds the table lock while a change is made (add/remove).
  template <typename Change>
  auto change_table(Change&& change) -> decltype(change());

  std::string path_;
  PieceList pieces_;
  std::unique_ptr<PieceScan> scan_;
  RegionInfo info_;
  std::atomic<uint64_t> region_size_{0};  // bytes of the pieces in the table
  ivshmfs_header header_{};               // piece 0's checked header (what live table checks need)
  std::atomic<const Table*> table_{nullptr};
  std::atomic<uint64_t> seen_seq_{0};                 // live tables: the table_seq the current table was read at
  std::mutex tables_mutex_;                           // refresh and publish
  std::vector<std::unique_ptr<const Table>> tables_;  // every version published; guarded by tables_mutex_
};

// Identity of this system, to tell whether a claim's owner runs here.
uint64_t local_host_id() noexcept;

// This process as a claim records it. pid_ns and start_time are 0 when /proc
// cannot tell them (or describes another PID namespace than ours).
struct ProcessIdentity {
  uint64_t pid = 0;
  uint64_t pid_ns = 0;
  uint64_t start_time = 0;
};
ProcessIdentity local_process_identity();
// Whether a claim's owner is proven gone (see PartitionStat::owner_dead).
bool owner_proven_dead(bool owner_local, uint64_t pid, uint64_t pid_ns, uint64_t start_time);
// CLOCK_REALTIME in nanoseconds.
uint64_t wall_clock_ns() noexcept;

}  // namespace ivshmfs
