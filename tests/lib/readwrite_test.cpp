// SPDX-License-Identifier: MIT
// Append, read, view, stat and reset through PartitionWriter and Region:
// counts, offsets, capacity and "no space", binary data, generations,
// read-only readers that never write, and hostile control blocks.
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#include <numeric>
#include <random>

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPartitions = 4;
constexpr uint64_t kPieceSize = 128 * 1024;
constexpr uint64_t kCapacity = kPieceSize - IVSHMFS_PAGE_SIZE;  // in both modes

ClaimOptions quiet_claim() {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);  // no background writes to the region
  return options;
}

// Every test runs on a single-file region and on a split one.
class ReadWriteTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    region_ = open_region(file_.path(), true);
    ASSERT_NE(region_, nullptr);
    auto writer = PartitionWriter::claim(region_, 1, quiet_claim());
    ASSERT_TRUE(writer.ok()) << writer.error().message;
    writer_ = std::move(writer).value();
  }

  std::string read_at(uint64_t offset, std::size_t size, const Region* region = nullptr) {
    std::vector<std::byte> buf(size);
    auto n = (region != nullptr ? *region : *region_).read(1, offset, buf);
    if (!n.ok()) {
      ADD_FAILURE() << "read at " << offset << ": " << n.error().message;
      return {};
    }
    EXPECT_LE(*n, size);
    return as_string(std::span(buf).first(*n));
  }

  TestRegion file_{"rw", GetParam(), kPartitions, kPieceSize};
  std::shared_ptr<Region> region_;
  std::unique_ptr<PartitionWriter> writer_;
};

TEST_P(ReadWriteTest, AppendReturnsCountsAndReadsAtOffsets) {
  auto s0 = region_->stat(1);
  ASSERT_TRUE(s0.ok()) << s0.error().message;
  EXPECT_EQ(s0->length, 0u);
  EXPECT_EQ(s0->capacity, kCapacity);
  EXPECT_EQ(s0->generation % 2, 0u);

  auto n = writer_->append(as_bytes("hello, "));
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 7u);
  n = writer_->append(as_bytes("world"));
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 5u);
  n = writer_->append({});
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 0u) << "an empty append appends nothing";

  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 12u) << "committed length after two appends";
  EXPECT_EQ(s->generation, s0->generation) << "appends do not change the generation";

  EXPECT_EQ(read_at(0, 100), "hello, world") << "read from 0 with a larger buffer";
  EXPECT_EQ(read_at(0, 5), "hello") << "read limited by the buffer";
  EXPECT_EQ(read_at(7, 3), "wor") << "read in the middle";
  EXPECT_EQ(read_at(11, 10), "d") << "read of the last byte";
  EXPECT_EQ(read_at(12, 10), "") << "read at the end";
  EXPECT_EQ(read_at(1000, 10), "") << "read past the end";
  EXPECT_EQ(read_at(UINT64_MAX, 10), "") << "read at the largest offset";
  EXPECT_EQ(read_at(3, 0), "") << "read into an empty buffer";

  // Other partitions are untouched.
  auto other = region_->stat(2);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->length, 0u);

  auto v = region_->view(1, 7, 100);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(as_string(v->bytes), "world");
  EXPECT_TRUE(region_->generation_unchanged(1, v->generation));
  auto end = region_->view(1, 12, 100);
  ASSERT_TRUE(end.ok());
  EXPECT_TRUE(end->bytes.empty());

  auto missing = region_->read(kPartitions, 0, std::span<std::byte>());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, Errc::no_such_partition);
  EXPECT_NE(missing.error().message.find(file_.path()), std::string::npos) << missing.error().message;
  EXPECT_FALSE(region_->stat(99).ok());
  EXPECT_FALSE(region_->view(99, 0, 1).ok());
}

TEST_P(ReadWriteTest, BinaryDataWithZeroBytes) {
  std::vector<std::byte> data(10000);
  std::mt19937 rng(7);
  for (std::size_t i = 0; i < data.size(); ++i) {
    data[i] = i % 3 == 0 ? std::byte{0} : static_cast<std::byte>(rng());
  }
  data[0] = data[data.size() - 1] = std::byte{0};
  std::size_t done = 0;
  for (std::size_t chunk : {1u, 0u, 999u, 4096u, 5000u}) {
    chunk = std::min(chunk, data.size() - done);
    auto n = writer_->append(std::span(data).subspan(done, chunk));
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_EQ(*n, chunk);
    done += chunk;
  }
  ASSERT_EQ(done, data.size());
  std::vector<std::byte> back(data.size() + 10);
  auto n = region_->read(1, 0, back);
  ASSERT_TRUE(n.ok()) << n.error().message;
  ASSERT_EQ(*n, data.size());
  back.resize(*n);
  EXPECT_TRUE(back == data) << "binary data came back different";
}

TEST_P(ReadWriteTest, ShortAppendWhenFullThenNoSpace) {
  std::vector<std::byte> big(kCapacity - 10, std::byte{'a'});
  auto n = writer_->append(big);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, kCapacity - 10);
  std::vector<std::byte> tail(100, std::byte{'b'});
  n = writer_->append(tail);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 10u) << "the append that fills the partition is short";
  n = writer_->append(tail);
  ASSERT_FALSE(n.ok()) << "append to a full partition succeeded with " << *n;
  EXPECT_EQ(n.error().code, Errc::no_space) << n.error().message;
  EXPECT_NE(n.error().message.find("full"), std::string::npos) << n.error().message;
  EXPECT_EQ(n.error().negative_errno(), -ENOSPC);
  n = writer_->append({});
  EXPECT_TRUE(n.ok() && *n == 0) << "an empty append on a full partition is not an error";

  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, kCapacity);
  EXPECT_EQ(read_at(kCapacity - 11, 100), "abbbbbbbbbb");

  ASSERT_TRUE(writer_->reset().ok());
  n = writer_->append(tail);
  ASSERT_TRUE(n.ok()) << "a reset partition accepts appends again: " << n.error().message;
  EXPECT_EQ(*n, tail.size());
}

TEST_P(ReadWriteTest, ResetEmptiesAndBumpsGeneration) {
  ASSERT_TRUE(writer_->append(as_bytes("first generation")).ok());
  auto before = region_->stat(1);
  ASSERT_TRUE(before.ok());
  EXPECT_NE(before->last_write_ns, 0u) << "an append records its time";
  // Let the wall clock move on, so the reset's time is distinguishable. The
  // library may stamp with the coarse clock (one tick of resolution), which
  // lags the fine one: wait for that.
  auto coarse_ns = [] {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
  };
  while (coarse_ns() <= before->last_write_ns) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  ASSERT_TRUE(writer_->reset().ok());
  auto after = region_->stat(1);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->length, 0u);
  EXPECT_EQ(after->generation, before->generation + 2) << "a reset bumps the generation by two";
  EXPECT_GT(after->last_write_ns, before->last_write_ns) << "a reset records its time";
  EXPECT_EQ(read_at(0, 100), "");
  EXPECT_FALSE(region_->generation_unchanged(1, before->generation));
  EXPECT_TRUE(region_->generation_unchanged(1, after->generation));

  ASSERT_TRUE(writer_->append(as_bytes("second")).ok());
  uint64_t generation = 0;
  std::vector<std::byte> buf(100);
  auto n = region_->read(1, 0, buf, &generation);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(as_string(std::span(buf).first(*n)), "second") << "nothing of the first generation survives";
  EXPECT_EQ(generation, after->generation) << "read reports the generation it read";

  auto last = region_->stat(1);
  ASSERT_TRUE(last.ok());
  EXPECT_GE(last->last_write_ns, after->last_write_ns);

  // A reset of an empty partition still bumps the generation.
  ASSERT_TRUE(writer_->reset().ok());
  ASSERT_TRUE(writer_->reset().ok());
  auto twice = region_->stat(1);
  ASSERT_TRUE(twice.ok());
  EXPECT_EQ(twice->generation, after->generation + 4);
}

TEST_P(ReadWriteTest, StatShowsTheOwner) {
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->claimed);
  EXPECT_TRUE(s->alive);
  EXPECT_TRUE(s->owner_local);
  EXPECT_EQ(s->owner_pid, static_cast<uint64_t>(::getpid()));
  EXPECT_NE(s->owner_since_ns, 0u);
  EXPECT_GE(s->owner_heartbeat_ns, s->owner_since_ns);
  auto free_partition = region_->stat(0);
  ASSERT_TRUE(free_partition.ok());
  EXPECT_FALSE(free_partition->claimed);
  EXPECT_FALSE(free_partition->alive);
}

// Invariant 2: readers never write. A read-only mapping (a write would
// fault) reads and stats, and the file's bytes stay exactly as they were.
TEST_P(ReadWriteTest, ReadOnlyReadersNeverWrite) {
  ASSERT_TRUE(writer_->append(as_bytes("data for readers")).ok());
  ASSERT_TRUE(writer_->reset().ok());
  ASSERT_TRUE(writer_->append(as_bytes("after a reset")).ok());
  writer_.reset();  // released: nothing else writes the file now
  {
    auto holder = PartitionWriter::claim(region_, 2, quiet_claim());  // a claimed partition, too
    ASSERT_TRUE(holder.ok());
    holder.value()->release();
  }
  // Partition 3 is held by a forged remote owner whose heartbeat stopped long ago.
  RawPartition raw(file_, 3);
  poke(raw.control()->owner_token, 77);
  poke(raw.control()->owner_host, 12345);
  poke(raw.control()->owner_pid, 999999);
  poke(raw.control()->owner_heartbeat_ns, 1);

  const uint64_t before = file_.checksum();
  {
    RegionOpenOptions ro;
    ro.writable = false;
    auto reader = Region::open_path(file_.path(), ro);
    ASSERT_TRUE(reader.ok()) << reader.error().message;
    for (const Backend* b : (*reader)->backends()) ASSERT_FALSE(b->writable()) << b->path();
    EXPECT_EQ(read_at(0, 100, reader->get()), "after a reset");
    EXPECT_EQ(read_at(6, 5, reader->get()), "a res");
    for (uint32_t id = 0; id < kPartitions; ++id) {
      auto s = (*reader)->stat(id);
      ASSERT_TRUE(s.ok()) << s.error().message;
      EXPECT_EQ(s->length, id == 1 ? 13u : 0u);
    }
    auto stale = (*reader)->stat(3);
    ASSERT_TRUE(stale.ok());
    EXPECT_TRUE(stale->claimed);
    EXPECT_FALSE(stale->alive) << "a remote owner with an ancient heartbeat is not alive";
    auto v = (*reader)->view(1, 0, 5);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(as_string(v->bytes), "after");
    EXPECT_TRUE((*reader)->check_format().ok());
    // Claiming through a read-only mapping is refused cleanly.
    auto claim = PartitionWriter::claim(*reader, 0);
    ASSERT_FALSE(claim.ok());
    EXPECT_EQ(claim.error().code, Errc::read_only) << claim.error().message;
    // And formatting it too.
    auto format = Region::format((*reader)->backend((*reader)->partitions().front()), FormatOptions{4, true});
    ASSERT_FALSE(format.ok());
    EXPECT_EQ(format.error().code, Errc::read_only);
  }
  EXPECT_EQ(file_.checksum(), before) << "a reader changed the region's bytes";
}

// Invariant 1: positions from shared memory are clamped to the partition.
TEST_P(ReadWriteTest, HostileHeadIsClamped) {
  ASSERT_TRUE(writer_->append(as_bytes("abc")).ok());
  RawPartition raw(file_, 1);
  for (uint64_t hostile : {kCapacity + 1, kCapacity + 12345, UINT64_MAX / 2, UINT64_MAX}) {
    SCOPED_TRACE(hostile);
    poke(raw.control()->head, hostile);
    auto reader = open_region(file_.path(), false);
    ASSERT_NE(reader, nullptr);
    auto s = reader->stat(1);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s->length, kCapacity) << "stat reports an unclamped length";
    std::vector<std::byte> buf(kCapacity + 4096);
    auto n = reader->read(1, 0, buf);
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ(*n, kCapacity);
    n = reader->read(1, kCapacity - 1, buf);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, 1u);
    n = reader->read(1, kCapacity, buf);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, 0u);
    auto v = reader->view(1, 10, SIZE_MAX);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(v->bytes.size(), kCapacity - 10);
  }
  // The owner never takes its positions from shared memory after the claim:
  // it appends at its own head and its publish overwrites the peer's value.
  auto appended = writer_->append(as_bytes("x"));
  ASSERT_TRUE(appended.ok()) << appended.error().message;
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 4u);
  std::vector<std::byte> buf(16);
  auto n = region_->read(1, 0, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), *n), "abcx");
}

// Every combination of hostile head, base and hole: a reader never reads
// outside the partition (the region is mapped between PROT_NONE guard pages
// and the neighbouring partitions hold a marker that must never show up),
// never reports more than the capacity, and a read agrees with stat.
TEST_P(ReadWriteTest, HostilePositionsNeverReadOutsideThePartition) {
  const std::string fill(kCapacity, 'p');
  ASSERT_TRUE(writer_->append(as_bytes(fill)).ok());
  RawPartition raw(file_, 1);
  // Partitions 0 and 2 hold a marker that partition 1 must never show.
  for (uint32_t other : {0u, 2u}) std::memset(RawPartition(file_, other).data(), 'X', kCapacity);
  // In a split region, the piece of partition 1 alone lies between the guards.
  GuardPages guards;
  auto guarded = open_guarded(file_.file_of(1), BackendOptions{false, false, 0}, guards);
  ASSERT_TRUE(guarded.ok()) << guarded.error().message;
  auto reader = Region::open(std::move(guarded).value());
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  const std::vector<uint64_t> values{0,
                                     1,
                                     kCapacity / 2,
                                     kCapacity - 1,
                                     kCapacity,
                                     kCapacity + 1,
                                     2 * kCapacity,
                                     (1ULL << 62),
                                     IVSHMFS_HEAD_FENCE - 1,
                                     IVSHMFS_HEAD_FENCE,
                                     IVSHMFS_HEAD_FENCE | 7,
                                     UINT64_MAX - kCapacity,
                                     UINT64_MAX};
  std::vector<std::byte> buf(2 * kCapacity);
  std::mt19937_64 rng(7);
  int combinations = 0;
  for (uint64_t head : values) {
    for (uint64_t base : values) {
      for (int k = 0; k < 6; ++k) {
        const uint64_t hole_offset = values[rng() % values.size()] + (k % 2);
        const uint64_t hole_length = values[rng() % values.size()];
        ivshmfs_control* c = raw.control();
        poke(c->head, head);
        poke(c->base, base);
        poke(c->hole_offset, hole_offset);
        poke(c->hole_length, hole_length);
        poke(c->reserve_end, values[rng() % values.size()]);
        ++combinations;
        SCOPED_TRACE("head " + std::to_string(head) + " base " + std::to_string(base) + " hole " +
                     std::to_string(hole_offset) + "+" + std::to_string(hole_length));
        auto s = (*reader)->stat(1);
        ASSERT_TRUE(s.ok()) << s.error().message;
        ASSERT_LE(s->length, kCapacity);
        for (uint64_t offset : {uint64_t{0}, kCapacity / 3, kCapacity - 1, kCapacity, UINT64_MAX}) {
          auto n = (*reader)->read(1, offset, buf);
          ASSERT_TRUE(n.ok()) << n.error().message;
          ASSERT_EQ(*n, offset < s->length ? s->length - offset : 0);
          for (std::size_t i = 0; i < *n; ++i) {
            ASSERT_EQ(buf[i], std::byte{'p'})
                << "byte " << i << " of a read at " << offset << " came from outside partition 1";
          }
          auto v = (*reader)->view(1, offset, buf.size());
          ASSERT_TRUE(v.ok()) << v.error().message;
          ASSERT_LE(v->bytes.size(), *n);
          for (std::byte b : v->bytes) ASSERT_EQ(b, std::byte{'p'}) << "a view showed bytes from outside";
        }
      }
    }
  }
  RecordProperty("combinations", combinations);
}

// A reset that never finishes (odd generation, e.g. a crashed or hostile
// peer) makes readers give up with Errc::busy instead of spinning forever.
TEST_P(ReadWriteTest, StuckResetGivesBusy) {
  ASSERT_TRUE(writer_->append(as_bytes("abc")).ok());
  RawPartition raw(file_, 1);
  const uint64_t gen = peek(raw.control()->generation);
  poke(raw.control()->generation, gen + 1);
  std::vector<std::byte> buf(10);
  auto n = region_->read(1, 0, buf);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Errc::busy) << n.error().message;
  EXPECT_NE(n.error().message.find("partition 1"), std::string::npos) << n.error().message;
  auto snap = region_->snapshot(1);
  ASSERT_FALSE(snap.ok());
  EXPECT_EQ(snap.error().code, Errc::busy);
  // stat still tells who owns it (so it can be taken over and repaired).
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE(s->mid_reset);
  EXPECT_TRUE(s->claimed);
  EXPECT_EQ(s->owner_pid, static_cast<uint64_t>(::getpid()));
  auto v = region_->view(1, 0, 10);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code, Errc::busy);
  poke(raw.control()->generation, gen);
  EXPECT_EQ(read_at(0, 10), "abc") << "reads work again once the generation is even";
}

TEST_P(ReadWriteTest, ReserveThenCommit) {
  ASSERT_TRUE(writer_->append(as_bytes("head:")).ok());
  {
    auto r = writer_->reserve(10);
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->bytes().size(), 10u);
    std::memcpy(r->bytes().data(), "abcdefghij", 10);
    auto s = region_->stat(1);
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->length, 5u) << "reserved bytes are visible before commit";
    EXPECT_EQ(read_at(0, 100), "head:");
    EXPECT_EQ(r->commit(4), 4u);
    EXPECT_EQ(read_at(0, 100), "head:abcd") << "commit publishes only the first n bytes";
  }
  {
    auto r = writer_->reserve(100);
    ASSERT_TRUE(r.ok());
    std::memcpy(r->bytes().data(), "dropped", 7);
    // Destroyed without commit: nothing is published.
  }
  EXPECT_EQ(read_at(0, 100), "head:abcd") << "an abandoned reservation published bytes";
  auto zero = writer_->reserve(0);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.error().code, Errc::invalid_argument);
  {
    auto r = writer_->reserve(SIZE_MAX);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->bytes().size(), kCapacity - 9) << "a reservation is limited to the room left";
    std::memset(r->bytes().data(), 'z', r->bytes().size());
    EXPECT_EQ(r->commit(SIZE_MAX), kCapacity - 9) << "commit clamps to the reservation";
  }
  auto full = writer_->reserve(1);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, Errc::no_space) << full.error().message;
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, kCapacity);
}

TEST_P(ReadWriteTest, OneReservationAtATime) {
  auto r = writer_->reserve(4);
  ASSERT_TRUE(r.ok());
  auto again = writer_->reserve(1);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::busy) << "reserve";
  auto n = writer_->append(as_bytes("x"));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Errc::busy) << "append";
  auto x = writer_->reset();
  ASSERT_FALSE(x.ok());
  EXPECT_EQ(x.error().code, Errc::busy) << "reset";
  std::memcpy(r->bytes().data(), "abcd", 4);
  auto moved = std::move(*r);
  EXPECT_EQ(r->commit(4), 0u) << "a moved-from reservation committed";
  EXPECT_EQ(moved.commit(4), 4u);
  ASSERT_TRUE(writer_->append(as_bytes("e")).ok()) << "the reservation did not end at commit";
  EXPECT_EQ(read_at(0, 100), "abcde");
}

// The fast paths make no system call: a child process in seccomp's strict
// mode (any system call but read, write, exit and sigreturn kills it) appends,
// reserves, commits, reads, views and snapshots, then reports through a pipe.
TEST_P(ReadWriteTest, AppendAndReadMakeNoSystemCalls) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(fds[0]);
    std::array<std::byte, 64> record{};
    std::array<std::byte, 64> back{};
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0) ::syscall(SYS_exit, 3);
    char ok = 1;
    for (uint64_t i = 0; i < 512; ++i) {
      record[0] = static_cast<std::byte>(i);
      auto n = writer_->append(record);
      auto r = region_->read(1, i * record.size(), back);
      auto v = region_->view(1, i * record.size(), record.size());
      auto s = region_->snapshot(1);
      if (!n || *n != record.size() || !r || *r != record.size() || back[0] != record[0] || !v ||
          v->bytes.size() != record.size() || !s || s->length != (i + 1) * record.size()) {
        ok = 0;
      }
    }
    auto room = writer_->reserve(16);
    if (!room || room->commit(16) != 16) ok = 0;
    (void)!::write(fds[1], &ok, 1);
    ::syscall(SYS_exit, 0);  // exit_group, which _exit uses, is not allowed
  }
  ::close(fds[1]);
  char ok = 0;
  const ssize_t got = ::read(fds[0], &ok, 1);
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child was killed (signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0)
                                 << "): a fast path made a system call";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  ASSERT_EQ(got, 1);
  EXPECT_EQ(ok, 1) << "an append or read gave a wrong result";
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 512u * 64u + 16u);
}

TEST_P(ReadWriteTest, ReleasedWriterCannotWrite) {
  writer_->release();
  EXPECT_FALSE(writer_->owns());
  auto n = writer_->append(as_bytes("x"));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Errc::not_owner) << n.error().message;
  auto r = writer_->reset();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::not_owner);
  EXPECT_FALSE(writer_->heartbeat().ok());
  writer_->release();  // twice is harmless
}

// Doorbells: what an owner waits for is a word of its own control block,
// seen by every peer; the region refuses it for a partition it lacks and on
// a read-only mapping. A host file has no doorbell to open or ring.
TEST_P(ReadWriteTest, WaitingForIsTheOwnersWordAndSeenByPeers) {
  EXPECT_EQ(region_->waiting_for(1), 0u) << "a formatted region waits for nothing";
  ASSERT_TRUE(region_->announce_waiting(1, (uint64_t{1} << 0) | (uint64_t{1} << 3)).ok());
  auto reader = open_region(file_.path(), false);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->waiting_for(1), 0b1001u) << "another view of the region sees the announcement";
  EXPECT_EQ(reader->waiting_for(0), 0u) << "other control blocks are untouched";
  EXPECT_EQ(peek(region_->control(*region_->find(1))->waiting_for), 0b1001u) << "word 120 of the control block";
  EXPECT_FALSE(reader->announce_waiting(1, 1).ok()) << "a read-only mapping cannot announce";
  EXPECT_FALSE(region_->announce_waiting(kPartitions + 7, 1).ok()) << "no such partition";
  EXPECT_EQ(region_->waiting_for(kPartitions + 7), 0u);
  ASSERT_TRUE(region_->announce_waiting(1, 0).ok());
  EXPECT_EQ(reader->waiting_for(1), 0u) << "cleared when nobody waits";
  EXPECT_EQ(read_at(0, 16), "") << "announcing writes no data";
  EXPECT_FALSE(region_->backend(*region_->find(1)).open_doorbell(0).ok()) << "a host file has no doorbell";
  EXPECT_FALSE(region_->backend(*region_->find(1)).ring(0, 0).ok()) << "a host file has no doorbell";
}

IVSHMFS_BOTH_MODES(ReadWriteTest);

}  // namespace
}  // namespace ivshmfs::test
