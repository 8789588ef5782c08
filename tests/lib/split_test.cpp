// SPDX-License-Identifier: MIT
// Split regions: format_split's files and refusals, grouping pieces by
// format id, renamed, mixed and missing pieces, and a peer that opens only
// its own piece read-write. What holds in both modes is tested by the
// parameterised suites (ReadWriteTest, ClaimTest, ...).
#include <sys/stat.h>

#include <array>
#include <filesystem>
#include <fstream>

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPieces = 3;
constexpr uint64_t kPieceSize = 64 * 1024;

ClaimOptions quiet_claim() {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);
  return options;
}

class SplitTest : public ::testing::Test {
 protected:
  TestRegion region_{"split", Mode::split, kPieces, kPieceSize};
};

TEST_F(SplitTest, FormatWritesOnePieceFilePerPartition) {
  uint64_t format_id = 0;
  for (uint32_t id = 0; id < kPieces; ++id) {
    SCOPED_TRACE(id);
    const std::string file = split_piece_path(region_.path(), id);
    EXPECT_EQ(file, region_.path() + ".vm" + std::to_string(id));
    struct stat st {};
    ASSERT_EQ(::stat(file.c_str(), &st), 0) << file << ": " << std::strerror(errno);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), kPieceSize) << "each piece has the size asked for (a power of two)";
    RawMap raw(file);
    EXPECT_EQ(raw.header()->magic, IVSHMFS_MAGIC);
    EXPECT_EQ(raw.header()->features, IVSHMFS_FEATURE_SPLIT);
    EXPECT_EQ(raw.header()->split_pieces, kPieces);
    EXPECT_EQ(raw.header()->partition_count, 1u);
    EXPECT_EQ(raw.table()[0].id, id) << "a piece's one entry carries its partition id";
    EXPECT_EQ(raw.table()[0].capacity, kPieceSize - IVSHMFS_PAGE_SIZE);
    if (id == 0) format_id = raw.header()->format_id;
    EXPECT_EQ(raw.header()->format_id, format_id) << "every piece carries the region's one format id";
  }
  EXPECT_NE(format_id, 0u);
  struct stat st {};
  EXPECT_NE(::stat(region_.path().c_str(), &st), 0) << "the prefix itself is no file";
  EXPECT_FALSE(std::filesystem::exists(split_piece_path(region_.path(), kPieces)));

  auto region = open_region(region_.path(), false);
  ASSERT_NE(region, nullptr);
  EXPECT_TRUE(region->split());
  EXPECT_EQ(region->path(), region_.path());
  EXPECT_EQ(region->info().split_pieces, kPieces);
  EXPECT_EQ(region->info().partition_count, kPieces);
  EXPECT_EQ(region->info().format_id, format_id);
  EXPECT_EQ(region->info().region_size, kPieces * kPieceSize);
  ASSERT_EQ(region->backends().size(), kPieces);
  for (const PartitionInfo& p : region->partitions()) {
    EXPECT_EQ(region->backend(p).path(), split_piece_path(region_.path(), p.id));
    EXPECT_EQ(p.piece, p.id);
  }
}

TEST_F(SplitTest, PieceSizeMustBeAPowerOfTwo) {
  TempFile name{"split-size"};
  for (uint64_t size : {uint64_t{96 * 1024}, uint64_t{4096}, uint64_t{0}, uint64_t{65537}}) {
    SCOPED_TRACE(size);
    auto r = Region::format_split(name.path(), 2, size, false);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, Errc::invalid_argument);
    EXPECT_NE(r.error().message.find("power of two"), std::string::npos) << r.error().message;
    EXPECT_FALSE(std::filesystem::exists(split_piece_path(name.path(), 0))) << "a refusal creates no file";
  }
}

TEST_F(SplitTest, FormatRefusesDataWithoutForceAndRemovesStalePiecesWithIt) {
  {
    auto region = open_region(region_.path(), true);
    ASSERT_NE(region, nullptr);
    auto w = PartitionWriter::claim(region, 2, quiet_claim());
    ASSERT_TRUE(w.ok()) << w.error().message;
    ASSERT_TRUE((*w)->append(as_bytes("keep me")).ok());
  }
  const uint64_t before = region_.checksum();
  auto refused = Region::format_split(region_.path(), 2, kPieceSize, false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::already_formatted) << refused.error().message;
  EXPECT_EQ(region_.checksum(), before) << "a refused format changed a piece";

  auto other_size = Region::format_split(region_.path(), kPieces, 2 * kPieceSize, true);
  ASSERT_FALSE(other_size.ok());
  EXPECT_EQ(other_size.error().code, Errc::size_mismatch) << other_size.error().message;
  EXPECT_EQ(region_.checksum(), before);

  auto forced = Region::format_split(region_.path(), 2, kPieceSize, true);
  ASSERT_TRUE(forced.ok()) << forced.error().message;
  EXPECT_FALSE(std::filesystem::exists(split_piece_path(region_.path(), 2)))
      << "a piece beyond the new count would be an old region's piece";
  auto region = open_region(region_.path(), false);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->info().partition_count, 2u);
  EXPECT_EQ(region->info().split_pieces, 2u);
}

TEST_F(SplitTest, PiecesOfTwoRegionsAreNeverMixed) {
  TestRegion other{"split-other", Mode::split, kPieces, kPieceSize};
  // Piece 1 of the other region takes the place of ours: it is left out, the
  // region the other pieces agree on opens without it.
  std::filesystem::copy_file(other.file_of(1), region_.file_of(1), std::filesystem::copy_options::overwrite_existing);
  auto region = open_region(region_.path(), false);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->find(1), nullptr) << "a piece of another region was shown";
  EXPECT_EQ(region->info().partition_count, kPieces - 1);
  // The owner of that piece keeps its region's identity (its own piece wins).
  RegionOpenOptions own;
  own.writable = true;
  own.own_id = 1;
  auto as_owner = Region::open_path(region_.path(), own);
  ASSERT_TRUE(as_owner.ok()) << as_owner.error().message;
  EXPECT_EQ((*as_owner)->partitions().size(), 1u) << "vm1 sees the pieces of its own region only";
  // As many pieces of each region, and no own piece to decide: refused.
  std::filesystem::remove(region_.file_of(2));
  auto mixed = Region::open_path(region_.path(), RegionOpenOptions{});
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.error().message.find("two regions are never mixed"), std::string::npos) << mixed.error().message;
}

TEST_F(SplitTest, ACorruptPeerPieceCostsOnlyItsPartition) {
  RegionOpenOptions as_vm0;
  as_vm0.writable = true;
  as_vm0.own_id = 0;
  auto owner = Region::open_path(region_.path(), as_vm0);
  ASSERT_TRUE(owner.ok()) << owner.error().message;
  auto w = PartitionWriter::claim(*owner, 0, quiet_claim());
  ASSERT_TRUE(w.ok()) << w.error().message;
  ASSERT_TRUE((*w)->append(as_bytes("vm0 data")).ok());
  // vm2 scribbles over its own piece's header.
  {
    RawMap raw(region_.file_of(2));
    std::memset(raw.data(), 0x5a, IVSHMFS_PAGE_SIZE);
  }
  EXPECT_TRUE((*owner)->check_format().ok()) << "another VM's damaged piece ended the region for vm0";
  EXPECT_TRUE((*w)->append(as_bytes(", more")).ok());
  EXPECT_EQ(read_all(**owner, 0), "vm0 data, more");
  // Opened afresh, the damaged piece is left out.
  auto fresh = open_region(region_.path(), false);
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(fresh->find(2), nullptr);
  EXPECT_EQ(read_all(*fresh, 0), "vm0 data, more");
  // The own piece damaged ends it.
  {
    RawMap raw(region_.file_of(0));
    std::memset(raw.data(), 0x5a, 8);
  }
  EXPECT_FALSE((*owner)->check_format().ok());
}

TEST_F(SplitTest, ARenamedPieceIsRefused) {
  std::filesystem::rename(region_.file_of(2), split_piece_path(region_.path(), 5));
  auto region = Region::open_path(region_.path(), RegionOpenOptions{});
  ::unlink(split_piece_path(region_.path(), 5).c_str());
  ASSERT_FALSE(region.ok());
  EXPECT_NE(region.error().message.find("holds partition 2, not 5"), std::string::npos) << region.error().message;
}

TEST_F(SplitTest, AWholeRegionIsNoPiece) {
  // A single-file region named like a piece is not grouped with pieces.
  format_file(region_.file_of(1), 4 * kPieceSize, 2);
  auto region = Region::open_path(region_.path(), RegionOpenOptions{});
  ASSERT_FALSE(region.ok());
  EXPECT_NE(region.error().message.find(region_.file_of(1)), std::string::npos) << region.error().message;
}

TEST_F(SplitTest, AMissingPieceLeavesTheOthersUsable) {
  ASSERT_EQ(::unlink(region_.file_of(1).c_str()), 0);
  auto region = open_region(region_.path(), true);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->info().split_pieces, kPieces);
  EXPECT_EQ(region->info().partition_count, kPieces - 1);
  EXPECT_EQ(region->find(1), nullptr);
  ASSERT_NE(region->find(2), nullptr);
  auto w = PartitionWriter::claim(region, 2, quiet_claim());
  ASSERT_TRUE(w.ok()) << w.error().message;
  ASSERT_TRUE((*w)->append(as_bytes("still here")).ok());
  EXPECT_EQ(read_all(*region, 2), "still here");
  auto missing = region->stat(1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, Errc::no_such_partition);
}

TEST_F(SplitTest, APeerOpensOnlyItsOwnPieceReadWrite) {
  RegionOpenOptions options;
  options.writable = true;
  options.own_id = 1;
  auto region = Region::open_path(region_.path(), options);
  ASSERT_TRUE(region.ok()) << region.error().message;
  for (const PartitionInfo& p : (*region)->partitions()) {
    EXPECT_EQ((*region)->backend(p).writable(), p.id == 1) << "piece of partition " << p.id;
  }
  auto other = PartitionWriter::claim(*region, 0, quiet_claim());
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, Errc::read_only) << other.error().message;
  EXPECT_NE(other.error().message.find(region_.file_of(0)), std::string::npos) << other.error().message;
  auto own = PartitionWriter::claim(*region, 1, quiet_claim());
  ASSERT_TRUE(own.ok()) << own.error().message;
  ASSERT_TRUE((*own)->append(as_bytes("mine")).ok());
  // Another peer reads it through its own read-only mapping of the piece.
  auto reader = open_region(region_.path(), false);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(read_all(*reader, 1), "mine");
  // The other pieces' files were opened O_RDONLY: their modes allow that alone.
  ASSERT_EQ(::chmod(region_.file_of(2).c_str(), 0444), 0);
  options.own_id = 0;
  auto ro_peer = Region::open_path(region_.path(), options);
  EXPECT_TRUE(ro_peer.ok()) << (ro_peer.ok() ? "" : ro_peer.error().message);
}

TEST_F(SplitTest, ReformattingThePiecesIsNoticed) {
  auto region = open_region(region_.path(), false);
  ASSERT_NE(region, nullptr);
  ASSERT_TRUE(region->check_format().ok());
  // One piece formatted anew: another VM's business, that partition only.
  format_file(region_.file_of(2), kPieceSize, 1);
  EXPECT_TRUE(region->check_format().ok()) << "one peer's piece ended the whole region";
  // The whole region formatted anew: every piece changed.
  ASSERT_TRUE(Region::format_split(region_.path(), kPieces, kPieceSize, true).ok());
  auto check = region->check_format();
  ASSERT_FALSE(check.ok());
  EXPECT_EQ(check.error().code, Errc::reformatted);
  EXPECT_NE(check.error().message.find(region_.path()), std::string::npos) << check.error().message;
}

// split_pieces counts the pieces formatted together: a piece added later
// has an id at or past it, which is valid; an id of 64 or more is not.
TEST_F(SplitTest, APieceIdMayPassThePieceCountButNotTheIdRange) {
  RawMap raw(region_.file_of(2));
  raw.table()[0].id = kPieces;
  auto added = Region::open_path(region_.file_of(2), RegionOpenOptions{});
  ASSERT_TRUE(added.ok()) << added.error().message;
  EXPECT_NE((*added)->find(kPieces), nullptr);
  raw.table()[0].id = IVSHMFS_MAX_PARTITIONS;
  auto region = Region::open_path(region_.file_of(2), RegionOpenOptions{});
  ASSERT_FALSE(region.ok());
  EXPECT_EQ(region.error().code, Errc::corrupt_partition_table) << region.error().message;
  EXPECT_NE(region.error().message.find("out of range"), std::string::npos) << region.error().message;
}

TEST_F(SplitTest, OnePieceOpensAlone) {
  // A guest that was given one piece only (or a tool pointed at one file).
  auto region = open_region(region_.file_of(2), false);
  ASSERT_NE(region, nullptr);
  EXPECT_TRUE(region->split());
  ASSERT_EQ(region->partitions().size(), 1u);
  EXPECT_EQ(region->partitions().front().id, 2u);
}

TEST_F(SplitTest, APrefixThatIsAFileIsRefused) {
  TempFile file{"split-prefix", 4096};
  auto r = Region::format_split(file.path(), 2, kPieceSize, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("a file of that name exists"), std::string::npos) << r.error().message;
}

// Pieces come and go while peers have the region open: a piece added on
// the host (add_partition on the prefix) is taken in by refresh_table with
// this region's identity and the access the peer's own id gives it; a
// removed piece leaves the table (its rows stay valid), and its id (and a
// new size) may be used again. Files that are not pieces of this region are
// never taken in.
TEST_F(SplitTest, PiecesAreAddedAndRemovedWhileTheRegionIsOpen) {
  RegionOpenOptions as_vm0;
  as_vm0.writable = true;
  as_vm0.own_id = 0;
  auto opened = Region::open_path(region_.path(), as_vm0);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  std::shared_ptr<Region> peer = *opened;
  ASSERT_TRUE(peer->scans_pieces());
  ASSERT_TRUE(peer->table_may_change());
  auto nothing = peer->refresh_table();
  ASSERT_TRUE(nothing.ok()) << nothing.error().message;
  EXPECT_FALSE(nothing->changed) << "no piece came or went";

  auto admin = open_region(region_.path(), true);
  ASSERT_NE(admin, nullptr);
  auto added = admin->add_partition(NewPartition{std::nullopt, 2 * kPieceSize, false});
  ASSERT_TRUE(added.ok()) << added.error().message;
  EXPECT_EQ(added->id, kPieces) << "the lowest id without a piece";
  EXPECT_EQ(added->capacity, 2 * kPieceSize - IVSHMFS_PAGE_SIZE);
  {
    RawMap raw(split_piece_path(region_.path(), kPieces));
    RawMap first(split_piece_path(region_.path(), 0));
    EXPECT_EQ(raw.header()->features, IVSHMFS_FEATURE_SPLIT);
    EXPECT_EQ(raw.header()->format_id, first.header()->format_id) << "the region's identity";
    EXPECT_EQ(raw.header()->format_time_ns, first.header()->format_time_ns);
    EXPECT_EQ(raw.header()->split_pieces, kPieces) << "split_pieces stays the count formatted together";
    EXPECT_EQ(raw.table()[0].id, kPieces);
    EXPECT_EQ(raw.header()->region_size, 2 * kPieceSize);
  }
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(region_.path()).parent_path())) {
    EXPECT_EQ(entry.path().string().find(region_.path() + ".vm" + std::to_string(kPieces) + ".new"), std::string::npos)
        << "the temporary file was left: " << entry.path();
  }

  EXPECT_TRUE(peer->table_moved()) << "the pieces' directory changed";
  auto change = peer->refresh_table();
  ASSERT_TRUE(change.ok()) << change.error().message;
  EXPECT_TRUE(change->changed);
  ASSERT_EQ(change->added.size(), 1u);
  EXPECT_EQ(change->added[0].id, kPieces);
  EXPECT_TRUE(change->removed.empty());
  const PartitionInfo* seen = peer->find(kPieces);
  ASSERT_NE(seen, nullptr);
  EXPECT_EQ(seen->index, kPieces) << "a split region's partition sits in the slot of its id";
  EXPECT_FALSE(peer->backend(*seen).writable()) << "another VM's piece is opened read-only";
  EXPECT_EQ(peer->info().region_size, kPieces * kPieceSize + 2 * kPieceSize);
  {
    auto writer = PartitionWriter::claim(admin, kPieces, quiet_claim());
    ASSERT_TRUE(writer.ok()) << writer.error().message;
    const std::string text = "abc";
    ASSERT_TRUE((*writer)->append(std::as_bytes(std::span(text.data(), text.size()))).ok());
    std::array<std::byte, 8> out{};
    auto n = peer->read(kPieces, 0, out);
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ(*n, 3u) << "the peer reads the new piece";
    auto refused = admin->remove_partition(kPieces);
    ASSERT_FALSE(refused.ok()) << "a piece with a live owner was removed";
    EXPECT_EQ(refused.error().code, Errc::claimed);
  }
  ASSERT_TRUE(admin->remove_partition(kPieces).ok());
  EXPECT_FALSE(std::filesystem::exists(split_piece_path(region_.path(), kPieces)));
  auto gone = peer->refresh_table();
  ASSERT_TRUE(gone.ok()) << gone.error().message;
  ASSERT_EQ(gone->removed.size(), 1u);
  EXPECT_EQ(gone->removed[0].id, kPieces);
  EXPECT_EQ(peer->find(kPieces), nullptr);
  EXPECT_EQ(seen->capacity, 2 * kPieceSize - IVSHMFS_PAGE_SIZE) << "rows of the old table stay valid";
  EXPECT_TRUE(peer->check_format().ok()) << "a removed piece does not count against the region";

  // The id again, another size: a new, empty partition.
  auto again = admin->add_partition(NewPartition{kPieces, kPieceSize, false});
  ASSERT_TRUE(again.ok()) << again.error().message;
  ASSERT_TRUE(peer->refresh_table().ok());
  const PartitionInfo* reused = peer->find(kPieces);
  ASSERT_NE(reused, nullptr);
  EXPECT_EQ(reused->capacity, kPieceSize - IVSHMFS_PAGE_SIZE);
  EXPECT_NE(reused->piece, seen->piece) << "a new piece, not the removed one";
  auto s = peer->snapshot(kPieces);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 0u) << "nothing of the removed piece shows in the new one";

  // Refusals: a size that is no BAR, a taken id, rings.
  auto odd = admin->add_partition(NewPartition{std::nullopt, 3 * IVSHMFS_PAGE_SIZE, false});
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.error().code, Errc::invalid_argument);
  auto taken = admin->add_partition(NewPartition{1U, kPieceSize, false});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, Errc::already_formatted);
  EXPECT_FALSE(admin->add_partition(NewPartition{std::nullopt, kPieceSize, true}).ok());

  // Not pieces of this region: another region's piece, a renamed piece, a
  // file that is no region at all. None is taken in, and the peer goes on.
  TestRegion other{"split-foreign", Mode::split, 1, kPieceSize};
  std::filesystem::copy_file(other.file_of(0), split_piece_path(region_.path(), 10));
  std::filesystem::copy_file(region_.file_of(1), split_piece_path(region_.path(), 11));
  {
    std::ofstream junk(split_piece_path(region_.path(), 12));
    junk << std::string(kPieceSize, 'x');
  }
  auto foreign = peer->refresh_table();
  ASSERT_TRUE(foreign.ok()) << foreign.error().message;
  EXPECT_EQ(peer->find(10), nullptr) << "another region's piece was taken in";
  EXPECT_EQ(peer->find(11), nullptr) << "a renamed piece was taken in";
  EXPECT_EQ(peer->find(12), nullptr) << "a file that is no region was taken in";
  EXPECT_EQ(peer->partitions().size(), kPieces + 1);
}

// A region opened from a list of backends (a guest's devices) has no
// directory to scan: its pieces are fixed, and adding one says where it is
// done.
TEST_F(SplitTest, PiecesOfBackendsGivenOneByOneAreFixed) {
  std::vector<std::unique_ptr<Backend>> backends;
  for (uint32_t id = 0; id < kPieces; ++id) {
    auto b = Backend::open(region_.file_of(id), BackendOptions{true, false, 0});
    ASSERT_TRUE(b.ok()) << b.error().message;
    backends.push_back(std::move(b).value());
  }
  auto region = Region::open_pieces(std::move(backends), "devices");
  ASSERT_TRUE(region.ok()) << region.error().message;
  EXPECT_FALSE((*region)->scans_pieces());
  auto added = (*region)->add_partition(NewPartition{std::nullopt, kPieceSize, false});
  ASSERT_FALSE(added.ok());
  EXPECT_NE(added.error().message.find("hot-plug"), std::string::npos) << added.error().message;
}

}  // namespace
}  // namespace ivshmfs::test
