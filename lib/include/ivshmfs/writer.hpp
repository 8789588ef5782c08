// SPDX-License-Identifier: MIT
// The owner of a partition: claims it, appends, resets, heartbeats, releases.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <utility>

#include "ivshmfs/error.hpp"
#include "ivshmfs/region.hpp"

namespace ivshmfs {

struct ClaimOptions {
  LivenessPolicy liveness{};
  // How often the background thread refreshes the heartbeat; zero disables
  // the thread (the caller then calls heartbeat() itself).
  std::chrono::milliseconds heartbeat_interval{1000};
  // Take the partition even from a live owner. The displaced owner notices at
  // its next append or heartbeat and stops writing; whatever it was copying
  // is fenced off (see docs/layout.md), never published.
  bool force = false;
};

// One writer object belongs to one thread at a time: append, reserve/commit and
// reset must not run concurrently on the same writer (serialise them outside,
// as the filesystem daemon and the C API do). In exchange the append path takes
// no lock and makes no system call: it checks the claim, announces how far it
// will copy (only when that passes what it announced before), copies, stamps
// the time and publishes the new head with a compare-and-swap, which fails
// once a takeover fenced it off. The heartbeat runs on the writer's own thread
// and touches only the claim's fields.
class PartitionWriter {
 public:
  // Claims partition `id`. Refused with Errc::claimed (the message names the
  // owner and since when) while a live owner holds it; a stale claim, or one
  // whose owner is proven gone (PartitionStat::owner_dead), is taken over. A
  // takeover from an owner not proven gone fences off the range that owner
  // announced and may still be copying into; it is refused when the
  // partition already holds such a hole (reformat it). A ring is never
  // fenced: a takeover from an owner not proven gone that announced bytes it
  // has not published is refused (Errc::claimed).
  static Result<std::unique_ptr<PartitionWriter>> claim(std::shared_ptr<Region> region, uint32_t id,
                                                        const ClaimOptions& options = {});

  PartitionWriter(const PartitionWriter&) = delete;
  PartitionWriter& operator=(const PartitionWriter&) = delete;
  ~PartitionWriter();  // releases the claim

  // Appends after the published bytes and publishes the new head. Returns
  // the bytes appended: fewer than asked when the partition fills, and
  // Errc::no_space when it is full; Errc::not_owner when the claim was taken
  // over (then nothing of this append is visible, ever). A ring partition
  // never fills: it appends everything, overwriting its oldest bytes, and
  // refuses an append larger than its capacity whole (Errc::too_big).
  Result<std::size_t> append(std::span<const std::byte> bytes);
  // Room past the committed length, held exclusively until commit() or
  // destruction: the way to fill the partition without an intermediate copy
  // (e.g. straight from a pipe). Nothing is visible to readers until commit.
  class Reservation {
   public:
    Reservation(Reservation&& other) noexcept
        : writer_(std::exchange(other.writer_, nullptr)), length_(other.length_), bytes_(other.bytes_) {}
    Reservation& operator=(Reservation&&) = delete;
    ~Reservation() { commit(0); }
    // Where to put the bytes: at most the size asked for, never empty.
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return bytes_; }
    // Publishes the first n bytes (n <= bytes().size()); ends the reservation.
    // Returns the bytes published: 0 also when the claim was taken over.
    std::size_t commit(std::size_t n) noexcept;

   private:
    friend class PartitionWriter;
    Reservation(PartitionWriter& writer, uint64_t start, std::span<std::byte> bytes)
        : writer_(&writer), length_(start), bytes_(bytes) {}
    PartitionWriter* writer_;  // null once committed or moved from
    uint64_t length_;          // data-area offset of bytes()
    std::span<std::byte> bytes_;
  };
  // Up to `max` bytes of room (max > 0); Errc::no_space when the partition is
  // full. A ring: up to the end of its data area (it wraps at the next one). One reservation at a time: appends, resets
  // and another reserve() fail with Errc::busy until it ends.
  Result<Reservation> reserve(std::size_t max);

  // Truncates the partition to zero under the generation counter (the new
  // generation starts at the head). Errc::not_owner when the claim was taken
  // over meanwhile: then the taker finished the reset or it never happened.
  Result<void> reset();
  // Refreshes the heartbeat (and the claim's owner fields, should a losing
  // claimer have overwritten them); Errc::not_owner once the claim was taken over.
  Result<void> heartbeat();
  // Gives the partition up; later calls fail with Errc::not_owner.
  void release() noexcept;

  [[nodiscard]] uint32_t id() const noexcept { return partition_.id; }
  [[nodiscard]] const std::shared_ptr<Region>& region() const noexcept { return region_; }
  [[nodiscard]] const PartitionInfo& partition() const noexcept { return partition_; }
  [[nodiscard]] bool owns() const noexcept;

 private:
  PartitionWriter(std::shared_ptr<Region> region, const PartitionInfo& partition, uint64_t token);
  [[nodiscard]] bool token_held() const noexcept;
  // Errc::reformatted or Errc::not_owner when this writer may no longer write.
  [[nodiscard]] Result<void> still_owner() const;
  // The append path's check: this region format and our claim, two loads.
  [[nodiscard]] bool may_write() const noexcept;
  // Why a write cannot go ahead (busy, lost claim, reformatted, full).
  [[nodiscard]] Error refusal() const;
  // A ring refuses an append larger than itself, whole.
  [[nodiscard]] Error too_big(std::size_t size) const;
  // Where the next `want` bytes go: at most two pieces around the hole.
  struct Placement {
    uint64_t first_at = 0;  // data-area offsets
    std::size_t first = 0;
    uint64_t second_at = 0;
    std::size_t second = 0;
    uint64_t end = 0;  // data-area offset of the new head
  };
  [[nodiscard]] Placement place(std::size_t want, bool contiguous) const noexcept;
  // Makes sure reserve_end covers `end` (absolute) and the claim is still
  // ours; false when it is not.
  [[nodiscard]] bool announce(uint64_t end) noexcept;
  // Publishes the head `end` (absolute) by compare-and-swap; false when a
  // takeover moved the head.
  [[nodiscard]] bool publish(uint64_t end) noexcept;
  [[nodiscard]] bool publish_over(uint64_t seen, uint64_t end) noexcept;
  // Loads head, base and hole after the claim settled them.
  void load_positions() noexcept;

  std::shared_ptr<Region> region_;
  PartitionInfo partition_;
  Backend& backend_;  // the piece holding the partition
  ivshmfs_control* control_;
  std::byte* data_;
  ivshmfs_header* header_;
  uint64_t format_id_;
  uint64_t token_;
  // The positions as this owner last published them (absolute; see
  // docs/layout.md). Only the owner moves them, so the copies are
  // authoritative: a hostile value in the shared fields makes the next
  // publish fail (not_owner), it is never trusted.
  uint64_t head_ = 0;
  uint64_t base_ = 0;
  uint64_t hole_offset_ = 0;            // data-area offset
  uint64_t hole_length_ = 0;            // 0: no hole
  uint64_t announced_ = 0;              // reserve_end is at least this
  ProcessIdentity identity_;            // as the claim recorded it
  bool futex_wakes_ = false;            // a host file: wake peers' futex waiters after commits (wake.hpp)
  bool reserved_ = false;               // a Reservation is outstanding
  std::atomic<bool> resetting_{false};  // reset() runs (the heartbeat thread reads it)
  std::jthread heartbeat_thread_;
};

}  // namespace ivshmfs
