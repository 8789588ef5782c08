// SPDX-License-Identifier: MIT
// Live partition tables (docs/layout.md, "Live partition table"): format
// with free slots, add and remove partitions while other peers have the
// region open, reuse of a removed partition's space, hostile and half-written
// entries, a dead changer's lock, and readers that refresh while changers
// add and remove in a loop (never acting on a half-written entry).
#include <atomic>
#include <set>
#include <thread>

#include "ivshmfs/ivshmfs.h"
#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint64_t kRegionSize = 1 << 20;

// A live region of `partitions` partitions and `slots` table slots.
void format_live(const std::string& path, uint32_t partitions, uint32_t slots,
                 std::optional<uint64_t> free_bytes = std::nullopt) {
  auto backend = Backend::open(path, BackendOptions{true, true, kRegionSize});
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  FormatOptions options;
  options.partitions = partitions;
  options.slots = slots;
  options.free_bytes = free_bytes;
  options.force = true;
  auto formatted = Region::format(**backend, options);
  ASSERT_TRUE(formatted.ok()) << formatted.error().message;
}

TEST(LiveTable, FormatKeepsFreeSlotsAndSpace) {
  TempFile file("live-format");
  format_live(file.path(), 2, 8);
  auto region = open_region(file.path(), false);
  ASSERT_NE(region, nullptr);
  EXPECT_TRUE(region->live_table());
  EXPECT_NE(region->info().features & IVSHMFS_FEATURE_LIVE_TABLE, 0U) << "the feature bit makes older peers refuse it";
  EXPECT_EQ(region->info().table_slots, 8U);
  ASSERT_EQ(region->partitions().size(), 2U);
  const FreeSpace free = region->free_space();
  EXPECT_EQ(free.free_slots, 6U);
  // Unsized partitions get the share of one slot in eight; six shares stay free.
  EXPECT_GE(free.total, 6 * region->partitions().front().capacity) << "the unassigned data area stays free";
  EXPECT_EQ(free.largest, free.total) << "one free extent after the formatted partitions";
  RawMap raw(file.path());
  EXPECT_EQ(peek(raw.header()->table_seq) % 2, 0U) << "the seqlock is even while nothing changes";
  EXPECT_EQ(peek(raw.header()->table_lock), 0U);
}

TEST(LiveTable, FreeOptionKeepsExactlyThatMuchFree) {
  TempFile file("live-free");
  format_live(file.path(), 2, 4, 256 * 1024);
  auto region = open_region(file.path(), false);
  ASSERT_NE(region, nullptr);
  // At least SIZE stays free; the unsized partitions' shares round down to
  // pages, which leaves less than a page each on top.
  EXPECT_GE(region->free_space().total, 256U * 1024) << "--free SIZE stays free";
  EXPECT_LT(region->free_space().total, 256U * 1024 + 2 * IVSHMFS_PAGE_SIZE);
}

TEST(LiveTable, AnAddedPartitionAppearsAtThePeersNextRefreshAndItsBytesReadBack) {
  TempFile file("live-add");
  format_live(file.path(), 2, 8);
  auto peer = open_region(file.path(), false);  // a mounted peer, opened before the add
  auto admin = open_region(file.path(), true);
  ASSERT_NE(peer, nullptr);
  ASSERT_NE(admin, nullptr);
  auto nothing = peer->refresh_table();
  ASSERT_TRUE(nothing.ok()) << nothing.error().message;
  EXPECT_FALSE(nothing->changed) << "no change yet";

  auto added = admin->add_partition(NewPartition{std::nullopt, 64 * 1024, false});
  ASSERT_TRUE(added.ok()) << added.error().message;
  EXPECT_EQ(added->id, 2U) << "the lowest unused id";
  EXPECT_EQ(added->index, 2U) << "the lowest free slot";
  EXPECT_EQ(peer->find(2), nullptr) << "the peer sees the table it last refreshed";

  auto change = peer->refresh_table();
  ASSERT_TRUE(change.ok()) << change.error().message;
  EXPECT_TRUE(change->changed);
  ASSERT_EQ(change->added.size(), 1U);
  EXPECT_EQ(change->added.front().id, 2U);
  EXPECT_TRUE(change->removed.empty());
  ASSERT_NE(peer->find(2), nullptr);
  EXPECT_EQ(peer->find(2)->capacity, 64U * 1024);

  auto writer = PartitionWriter::claim(admin, 2);
  ASSERT_TRUE(writer.ok()) << writer.error().message;
  const std::string text = "vm2 joined and wrote this";
  ASSERT_TRUE((*writer)->append(as_bytes(text)).ok());
  EXPECT_EQ(read_all(*peer, 2), text) << "the peer reads the new partition byte-exact";
  auto again = peer->refresh_table();
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->changed) << "a claim and an append are no table change";
}

TEST(LiveTable, RemovalWaitsForTheOwnerAndTheSpaceIsReusedAsANewPartition) {
  TempFile file("live-remove");
  format_live(file.path(), 2, 4);
  auto peer = open_region(file.path(), false);
  auto admin = open_region(file.path(), true);
  ASSERT_NE(peer, nullptr);
  ASSERT_NE(admin, nullptr);
  auto first = admin->add_partition(NewPartition{std::nullopt, 64 * 1024, false});
  ASSERT_TRUE(first.ok()) << first.error().message;
  {
    auto writer = PartitionWriter::claim(admin, first->id);
    ASSERT_TRUE(writer.ok()) << writer.error().message;
    ASSERT_TRUE((*writer)->append(as_bytes(std::string("old data"))).ok());
    auto refused = admin->remove_partition(first->id);
    ASSERT_FALSE(refused.ok()) << "a partition with a live owner must not be removed";
    EXPECT_EQ(refused.error().code, Errc::claimed) << refused.error().message;
  }
  ASSERT_TRUE(peer->refresh_table().ok());
  const PartitionInfo* old_row = peer->find(first->id);
  ASSERT_NE(old_row, nullptr);
  const PartitionInfo old_copy = *old_row;

  auto removed = admin->remove_partition(first->id);
  ASSERT_TRUE(removed.ok()) << removed.error().message;
  auto change = peer->refresh_table();
  ASSERT_TRUE(change.ok()) << change.error().message;
  ASSERT_EQ(change->removed.size(), 1U);
  EXPECT_EQ(change->removed.front().id, first->id);
  EXPECT_EQ(peer->find(first->id), nullptr);
  std::vector<std::byte> buf(16);
  auto gone = peer->read(first->id, 0, buf);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, Errc::no_such_partition);
  EXPECT_TRUE(same_partition(*old_row, old_copy)) << "rows handed out before stay valid and unchanged";
  auto twice = admin->remove_partition(first->id);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.error().code, Errc::no_such_partition);

  auto second = admin->add_partition(NewPartition{std::nullopt, 64 * 1024, true});
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_EQ(second->id, first->id) << "the lowest unused id again";
  EXPECT_EQ(second->data_offset, first->data_offset) << "first fit reuses the removed partition's space";
  EXPECT_EQ(second->index, first->index) << "and its slot";
  EXPECT_NE(second->serial, first->serial) << "the slot's serial tells the new partition from the old";
  EXPECT_FALSE(same_partition(*first, *second));
  auto seen = peer->refresh_table();
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(seen->added.size(), 1U);
  auto s = peer->stat(second->id);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->length, 0U) << "a new partition starts empty: no byte of the old one shows";
  EXPECT_FALSE(s->claimed) << "and unclaimed";
  EXPECT_TRUE(s->ring);
}

TEST(LiveTable, AddRefusesWhatDoesNotFitWithAClearError) {
  TempFile file("live-refuse");
  format_live(file.path(), 1, 3, 128 * 1024);
  auto admin = open_region(file.path(), true);
  ASSERT_NE(admin, nullptr);
  auto too_big = admin->add_partition(NewPartition{std::nullopt, 256 * 1024, false});
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.error().code, Errc::no_space);
  EXPECT_NE(too_big.error().message.find("largest is 128 KiB"), std::string::npos) << too_big.error().message;
  auto odd = admin->add_partition(NewPartition{std::nullopt, 5000, false});
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.error().code, Errc::invalid_argument);
  auto bad_id = admin->add_partition(NewPartition{IVSHMFS_MAX_PARTITIONS, 4096, false});
  ASSERT_FALSE(bad_id.ok());
  EXPECT_EQ(bad_id.error().code, Errc::invalid_argument);
  auto taken = admin->add_partition(NewPartition{0, 4096, false});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, Errc::claimed) << "id 0 exists";
  ASSERT_TRUE(admin->add_partition(NewPartition{9, 4096, false}).ok());
  ASSERT_TRUE(admin->add_partition(NewPartition{std::nullopt, 4096, false}).ok());
  auto full = admin->add_partition(NewPartition{std::nullopt, 4096, false});
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, Errc::no_space);
  EXPECT_NE(full.error().message.find("slots are in use"), std::string::npos) << full.error().message;

  auto reader = open_region(file.path(), false);
  ASSERT_NE(reader, nullptr);
  auto read_only = reader->add_partition(NewPartition{std::nullopt, 4096, false});
  ASSERT_FALSE(read_only.ok());
  EXPECT_EQ(read_only.error().code, Errc::read_only);

  TempFile fixed("live-fixed", 0);
  format_file(fixed.path(), kRegionSize, 2);
  auto fixed_region = open_region(fixed.path(), true);
  ASSERT_NE(fixed_region, nullptr);
  EXPECT_FALSE(fixed_region->live_table());
  auto refused = fixed_region->add_partition(NewPartition{std::nullopt, 4096, false});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::invalid_argument);
  EXPECT_NE(refused.error().message.find("--slots"), std::string::npos) << refused.error().message;
  auto none = fixed_region->refresh_table();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->changed);
}

TEST(LiveTable, HostileEntriesAreLeftOutAndTheOthersServedOn) {
  TempFile file("live-hostile");
  format_live(file.path(), 2, 6);
  auto peer = open_region(file.path(), false);
  ASSERT_NE(peer, nullptr);
  RawMap raw(file.path());
  ivshmfs_partition_entry* table = raw.table();
  const uint64_t seq = peek(raw.header()->table_seq);
  // A peer writes three bad live entries: overlapping partition 0, past the
  // end, and an id out of range; and one good one.
  table[2] = table[0];
  table[2].id = 5;
  table[2].control_offset = table[0].control_offset + 2 * sizeof(ivshmfs_control);
  table[3] = table[2];
  table[3].id = 6;
  table[3].control_offset += sizeof(ivshmfs_control);
  table[3].data_offset = kRegionSize - 4096;
  table[3].capacity = 8192;
  table[4] = table[3];
  table[4].id = 99;
  table[4].control_offset += sizeof(ivshmfs_control);
  table[4].data_offset = kRegionSize - 8192;
  table[4].capacity = 4096;
  table[5] = table[4];
  table[5].id = 7;
  table[5].control_offset += sizeof(ivshmfs_control);
  poke(raw.header()->table_seq, seq + 2);
  auto change = peer->refresh_table();
  ASSERT_TRUE(change.ok()) << change.error().message;
  ASSERT_EQ(change->added.size(), 1U) << "only the good entry is taken in";
  EXPECT_EQ(change->added.front().id, 7U);
  EXPECT_NE(peer->find(0), nullptr);
  EXPECT_NE(peer->find(1), nullptr);
  EXPECT_EQ(peer->find(5), nullptr) << "an entry overlapping partition 0 is left out";
  EXPECT_EQ(peer->find(6), nullptr) << "an entry past the end is left out";
  // A new peer opening now gets the same view.
  auto late = open_region(file.path(), false);
  ASSERT_NE(late, nullptr);
  EXPECT_EQ(late->partitions().size(), 3U);

  // A seqlock that stays odd: the table seen before is kept, with an error.
  poke(raw.header()->table_seq, seq + 5);
  auto stuck = peer->refresh_table();
  ASSERT_FALSE(stuck.ok());
  EXPECT_EQ(stuck.error().code, Errc::busy) << stuck.error().message;
  EXPECT_EQ(peer->partitions().size(), 3U);
}

TEST(LiveTable, AStaleLockIsBrokenAndAHalfWrittenEntryFreed) {
  TempFile file("live-lock");
  format_live(file.path(), 1, 4);
  RawMap raw(file.path());
  // A changer died in the middle of an add: the lock taken 10 s ago, the
  // seqlock odd, slot 1 marked live with no data area yet.
  const uint64_t then_ms = wall_clock_ns() / 1'000'000 - 10'000;
  poke(raw.header()->table_lock, (then_ms << IVSHMFS_TABLE_LOCK_TIME_SHIFT) | 1);
  poke(raw.header()->table_seq, peek(raw.header()->table_seq) + 1);
  raw.table()[1].id = 3;
  raw.table()[1].flags = IVSHMFS_PARTITION_LIVE | (1U << IVSHMFS_PARTITION_SERIAL_SHIFT);

  auto admin = open_region(file.path(), true);
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->find(3), nullptr) << "the half-written entry is not a partition";
  auto added = admin->add_partition(NewPartition{std::nullopt, 8192, false});
  ASSERT_TRUE(added.ok()) << added.error().message;
  EXPECT_EQ(added->index, 1U) << "the half-written slot was freed and reused";
  EXPECT_EQ(peek(raw.header()->table_seq) % 2, 0U) << "the seqlock is even again";
  EXPECT_EQ(peek(raw.header()->table_lock), 0U) << "the lock is released";
  EXPECT_EQ(admin->partitions().size(), 2U);
}

// Two changers add and remove their own partition in a loop while three
// readers refresh and check every row they are given: a torn copy would mix
// the fields of two versions of an entry (each changer alternates between
// two shapes whose size and ring flag go together).
TEST(LiveTable, ReadersNeverActOnAHalfWrittenEntry) {
  TempFile file("live-race");
  format_live(file.path(), 2, 8);
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<uint64_t> changes_seen{0};
  std::atomic<int> readers_ready{0};
  std::atomic<uint64_t> busy{0};
  auto changer = [&](uint32_t id, uint64_t small, uint64_t large) {
    auto region = open_region(file.path(), true);
    if (region == nullptr) return;
    while (readers_ready.load() < 3) std::this_thread::yield();
    for (int i = 0; i < 300; ++i) {
      const bool big = i % 2 == 1;
      auto added = region->add_partition(NewPartition{id, big ? large : small, big});
      if (!added.ok()) {
        ADD_FAILURE() << added.error().message;
        ++failures;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));  // let readers see it added
      auto removed = region->remove_partition(id);
      if (!removed.ok()) {
        ADD_FAILURE() << "round " << i << ": " << removed.error().message;
        ++failures;
        break;
      }
    }
  };
  auto reader = [&] {
    auto region = open_region(file.path(), false);
    ++readers_ready;
    if (region == nullptr) return;
    std::vector<std::byte> buf(64);
    while (!stop.load()) {
      auto change = region->refresh_table();
      if (!change.ok()) {
        ++busy;
        continue;  // busy: the changers kept the seqlock odd
      }
      if (change->changed) ++changes_seen;
      std::set<uint32_t> ids;
      for (const PartitionInfo& p : region->partitions()) {
        if (!ids.insert(p.id).second) ++failures;
        const bool shape_a = p.id == 10 && ((p.capacity == 8192 && !p.ring) || (p.capacity == 16384 && p.ring));
        const bool shape_b = p.id == 11 && ((p.capacity == 24576 && !p.ring) || (p.capacity == 32768 && p.ring));
        const bool formatted = p.id < 2 && !p.ring;
        if (!shape_a && !shape_b && !formatted) {
          ADD_FAILURE() << "a row no changer wrote: id " << p.id << " capacity " << p.capacity << " ring " << p.ring;
          ++failures;
        }
        (void)region->read(p.id, 0, buf);  // any partition in the table reads inside the mapping
      }
    }
  };
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) readers.emplace_back(reader);
  std::thread a(changer, 10, 8192, 16384);
  std::thread b(changer, 11, 24576, 32768);
  a.join();
  b.join();
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  // How often the readers caught the table changing depends on the
  // scheduler: reported, not asserted.
  RecordProperty("changes_seen", std::to_string(changes_seen.load()));
  RecordProperty("busy_refreshes", std::to_string(busy.load()));
  std::printf("readers saw %llu table changes (%llu refreshes found the seqlock busy)\n",
              static_cast<unsigned long long>(changes_seen.load()), static_cast<unsigned long long>(busy.load()));
  auto region = open_region(file.path(), false);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->partitions().size(), 2U) << "every added partition was removed again";
  EXPECT_EQ(region->free_space().free_slots, 6U);
}

TEST(LiveTable, TheCApiOpensALiveTableAsItIsAtOpen) {
  TempFile file("live-capi");
  format_live(file.path(), 2, 4);
  {
    auto admin = open_region(file.path(), true);
    ASSERT_NE(admin, nullptr);
    ASSERT_TRUE(admin->add_partition(NewPartition{5, 8192, false}).ok());
  }
  ivshmfs_open_options options{};
  options.backend = file.path().c_str();
  options.id = 5;
  options.flags = IVSHMFS_OPEN_WRITE;
  ivshmfs_region* handle = nullptr;
  ASSERT_EQ(ivshmfs_open(&options, &handle), 0);
  EXPECT_EQ(ivshmfs_partition_count(handle), 3U);
  const char text[] = "from C";
  EXPECT_EQ(ivshmfs_append(handle, text, sizeof text - 1), static_cast<ssize_t>(sizeof text - 1));
  char buf[16] = {};
  EXPECT_EQ(ivshmfs_read(handle, 5, 0, buf, sizeof buf), static_cast<ssize_t>(sizeof text - 1));
  EXPECT_STREQ(buf, text);
  ivshmfs_close(handle);
}

}  // namespace
}  // namespace ivshmfs::test
