// SPDX-License-Identifier: MIT
// The partition table as data: checking its entries (hostile input, at open
// and at every change of a live table) and the live table's protocol: the
// seqlock word header.table_seq that readers copy under, and the lock word
// header.table_lock that changers take (docs/layout.md, "Live partition
// table"). Only region.cpp uses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ivshmfs/error.hpp"
#include "ivshmfs/layout.h"
#include "ivshmfs/region.hpp"

namespace ivshmfs::detail {

// Checks the entries of a table copied into private memory against the
// (already checked) header `h` of a backend of `size` bytes. A fixed table:
// the first bad entry fails the whole region. A live table: free slots are
// skipped, and a bad live entry is left out, its reason appended to
// `skipped`. The partitions come back in table order; index is the slot,
// piece 0.
Result<std::vector<PartitionInfo>> check_table(const std::string& path, const ivshmfs_header& h,
                                               std::span<const ivshmfs_partition_entry> table, uint64_t size,
                                               std::vector<std::string>* skipped);

// A copy of a live table taken under its seqlock: `consistent` when no
// change overlapped the copy (else the last attempt, which may be torn).
struct TableCopy {
  uint64_t seq = 0;
  bool consistent = false;
  std::vector<ivshmfs_partition_entry> entries;
};
TableCopy copy_live_table(std::byte* base, uint32_t slots) noexcept;
uint64_t load_table_seq(std::byte* base) noexcept;

// Table changes (live tables only): take the lock (breaking a stale one and
// repairing the table a dead changer left half written), change entries
// between begin_change and end_change, release the lock.
Result<uint64_t> lock_table(std::byte* base, const std::string& path, const ivshmfs_header& h, uint64_t size);
void unlock_table(std::byte* base, uint64_t token) noexcept;
// Whether `token` still holds the lock (a stale holder's lock may be broken).
bool holds_table_lock(std::byte* base, uint64_t token) noexcept;
void begin_change(std::byte* base) noexcept;
void end_change(std::byte* base) noexcept;
// Writes slot `slot`'s entry; word 0 (id and flags, which hold the live bit)
// last. Only between begin_change and end_change.
void write_entry(std::byte* base, uint32_t slot, const ivshmfs_partition_entry& e) noexcept;
// Zeroes a control block with atomic stores (readers of a removed partition
// may still load from it).
void clear_control(std::byte* base, uint64_t control_offset) noexcept;

// The serial number of an entry's flags.
constexpr uint32_t entry_serial(uint32_t flags) noexcept {
  return (flags & IVSHMFS_PARTITION_SERIAL_MASK) >> IVSHMFS_PARTITION_SERIAL_SHIFT;
}

}  // namespace ivshmfs::detail
