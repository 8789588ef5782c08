// SPDX-License-Identifier: MIT
// Ring partitions (docs/layout.md, "Ring partitions") and partitions of
// different sizes at format: the retained range, overruns reported exactly,
// EFBIG, resets, takeovers, validation of the ring bits, and a writer
// streaming 100 rings' worth past three readers that check every byte.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "ivshmfs/ivshmfs.h"
#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint64_t kRing = 64 * 1024;

// The byte at file offset f of every stream in these tests: a reader can
// check any byte it gets against the offset it asked for, wherever it lands
// after an overrun.
std::byte expected_byte(uint64_t f) {
  uint64_t x = (f / 8) * 0x9E3779B97F4A7C15ULL;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 32;
  return static_cast<std::byte>(x >> ((f % 8) * 8));
}

std::vector<std::byte> stream_bytes(uint64_t from, std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = expected_byte(from + i);
  return v;
}

// Index of the first byte of `got` (read at file offset `from`) that is not
// the stream's, or -1.
long long first_wrong(uint64_t from, const std::byte* got, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (got[i] != expected_byte(from + i)) return static_cast<long long>(i);
  }
  return -1;
}

void format_ring(const std::string& path, uint64_t size, uint32_t partitions, std::vector<PartitionLayout> layout,
                 bool all_rings = false) {
  auto backend = Backend::open(path, BackendOptions{true, true, size});
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  FormatOptions options;
  options.partitions = partitions;
  options.force = true;
  options.ring = all_rings;
  options.layout = std::move(layout);
  auto formatted = Region::format(**backend, options);
  ASSERT_TRUE(formatted.ok()) << formatted.error().message;
}

ClaimOptions quiet_claim() {
  ClaimOptions o;
  o.heartbeat_interval = std::chrono::milliseconds(0);
  return o;
}

class Ring : public ::testing::Test {
 protected:
  void SetUp() override {
    format_ring(file_.path(), 4 * kRing, 2, {{0, kRing, true}});
    region_ = open_region(file_.path(), true);
    ASSERT_TRUE(region_);
    auto w = PartitionWriter::claim(region_, 0, quiet_claim());
    ASSERT_TRUE(w.ok()) << w.error().message;
    writer_ = std::move(w).value();
  }
  void write_stream(uint64_t from, uint64_t n, std::size_t chunk = 5000) {
    while (n > 0) {
      const std::size_t k = static_cast<std::size_t>(std::min<uint64_t>(n, chunk));
      auto bytes = stream_bytes(from, k);
      auto r = writer_->append(bytes);
      ASSERT_TRUE(r.ok()) << r.error().message;
      ASSERT_EQ(*r, k) << "a ring appends everything it is given";
      from += k;
      n -= k;
    }
  }
  TempFile file_{"ring", -1};
  std::shared_ptr<Region> region_;
  std::unique_ptr<PartitionWriter> writer_;
};

TEST_F(Ring, FormatMarksTheRingAndItsFeatureBit) {
  EXPECT_EQ(region_->info().features, IVSHMFS_FEATURE_RING);
  ASSERT_NE(region_->find(0), nullptr);
  EXPECT_TRUE(region_->find(0)->ring);
  EXPECT_EQ(region_->find(0)->capacity, kRing);
  EXPECT_FALSE(region_->find(1)->ring) << "only partition 0 was asked to be a ring";
  RawMap raw(file_.path());
  EXPECT_EQ(raw.table()[0].flags, IVSHMFS_PARTITION_RING);
  EXPECT_EQ(raw.table()[1].flags, 0u);
}

TEST_F(Ring, KeepsTheNewestCapacityBytesAndReadsAcrossTheWrap) {
  const uint64_t total = kRing * 5 / 2 + 123;
  write_stream(0, total);
  auto s = region_->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, total) << "a ring's length counts every byte written since the reset";
  EXPECT_EQ(s->retained_from, total - kRing) << "exactly the newest capacity bytes are retained";
  EXPECT_EQ(s->free, kRing) << "a ring never runs out of room";
  std::vector<std::byte> out(kRing);
  auto n = region_->read(0, total - kRing, out);
  ASSERT_TRUE(n.ok()) << n.error().message;
  ASSERT_EQ(*n, kRing);
  EXPECT_EQ(first_wrong(total - kRing, out.data(), *n), -1) << "the retained bytes, across the wrap";
  auto tail = region_->read(0, total - 10, out);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(*tail, 10u);
  EXPECT_EQ(first_wrong(total - 10, out.data(), 10), -1);
  auto end = region_->read(0, total, out);
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(*end, 0u) << "at the end: nothing, not an error";
}

TEST_F(Ring, AReadBelowTheRetainedRangeIsAnOverrunNotStaleBytes) {
  write_stream(0, 3 * kRing);
  std::vector<std::byte> out(100);
  for (uint64_t offset : {uint64_t{0}, kRing, 2 * kRing - 1}) {
    auto n = region_->read(0, offset, out);
    ASSERT_FALSE(n.ok()) << "offset " << offset << " was overwritten, yet the read returned " << *n << " bytes";
    EXPECT_EQ(n.error().code, Errc::overrun) << n.error().message;
    EXPECT_EQ(n.error().negative_errno(), -EPIPE);
    EXPECT_NE(n.error().message.find("oldest retained byte is at " + std::to_string(2 * kRing)), std::string::npos)
        << n.error().message;
  }
  auto ok = region_->read(0, 2 * kRing, out);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(first_wrong(2 * kRing, out.data(), *ok), -1);
}

TEST_F(Ring, BytesTheWriterAnnouncedItWillOverwriteAreNotTrusted) {
  write_stream(0, kRing);
  // A writer that announced 100 more bytes (and may be copying them over
  // offsets 0..99 right now): those are no longer retained.
  RawMap raw(file_.path());
  poke(raw.control(0)->reserve_end, peek(raw.control(0)->head) + 100);
  std::vector<std::byte> out(200);
  auto n = region_->read(0, 0, out);
  ASSERT_FALSE(n.ok()) << "offsets 0..99 may be half overwritten";
  EXPECT_EQ(n.error().code, Errc::overrun);
  auto s = region_->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->retained_from, 100u);
  EXPECT_EQ(s->length, kRing) << "nothing new is published before the copy";
  auto after = region_->read(0, 100, out);
  ASSERT_TRUE(after.ok()) << after.error().message;
  EXPECT_EQ(first_wrong(100, out.data(), *after), -1);
}

TEST_F(Ring, AnAppendLargerThanTheRingIsRefusedWhole) {
  write_stream(0, 1000);
  std::vector<std::byte> big(kRing + 1, std::byte{0x55});
  auto r = writer_->append(big);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::too_big) << r.error().message;
  EXPECT_EQ(r.error().negative_errno(), -EFBIG);
  auto s = region_->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 1000u) << "nothing of a refused append is published";
  auto whole = stream_bytes(1000, kRing);
  auto ok = writer_->append(whole);
  ASSERT_TRUE(ok.ok()) << "exactly one ring's worth fits: " << ok.error().message;
  EXPECT_EQ(*ok, kRing);
  std::vector<std::byte> out(kRing);
  auto n = region_->read(0, 1000, out);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(first_wrong(1000, out.data(), *n), -1);
}

TEST_F(Ring, NeverReportsNoSpace) {
  write_stream(0, 10 * kRing, 4096);
  auto s = region_->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 10 * kRing);
  EXPECT_EQ(s->retained_from, 9 * kRing);
}

TEST_F(Ring, AResetStartsAnEmptyRingAtTheHead) {
  write_stream(0, 2 * kRing + 7);
  ASSERT_TRUE(writer_->reset().ok());
  auto s = region_->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 0u);
  EXPECT_EQ(s->retained_from, 0u);
  write_stream(0, kRing / 2);
  std::vector<std::byte> out(kRing);
  auto n = region_->read(0, 0, out);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, kRing / 2);
  EXPECT_EQ(first_wrong(0, out.data(), *n), -1) << "file offsets restart at 0 after a reset";
}

TEST_F(Ring, AReservationEndsAtTheWrapAndCommitsAbsolutePositions) {
  write_stream(0, kRing - 10);
  auto res = writer_->reserve(100);
  ASSERT_TRUE(res.ok()) << res.error().message;
  EXPECT_EQ(res->bytes().size(), 10u) << "contiguous room up to the end of the data area";
  auto bytes = stream_bytes(kRing - 10, 10);
  std::memcpy(res->bytes().data(), bytes.data(), 10);
  EXPECT_EQ(res->commit(10), 10u);
  auto res2 = writer_->reserve(100);
  ASSERT_TRUE(res2.ok());
  EXPECT_EQ(res2->bytes().size(), 100u);
  bytes = stream_bytes(kRing, 100);
  std::memcpy(res2->bytes().data(), bytes.data(), 100);
  EXPECT_EQ(res2->commit(100), 100u);
  std::vector<std::byte> out(kRing);
  auto n = region_->read(0, 100, out);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, kRing);
  EXPECT_EQ(first_wrong(100, out.data(), *n), -1);
}

TEST_F(Ring, AViewIsRefused) {
  write_stream(0, 100);
  auto v = region_->view(0, 0, 100);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code, Errc::invalid_argument);
}

TEST_F(Ring, StatShowsRetainedRangeAndLoss) {
  write_stream(0, 3 * kRing + 5);
  auto s = region_->stat(0);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->ring);
  EXPECT_EQ(s->length, 3 * kRing + 5);
  EXPECT_EQ(s->retained_from, 2 * kRing + 5);
  EXPECT_EQ(s->fenced, 0u);
}

TEST_F(Ring, ATakeoverFromAnOwnerStoppedMidAppendIsRefusedNotFenced) {
  write_stream(0, 1000);
  // The owner announced an append it has not published, and stopped
  // heartbeating (a paused VM): it may copy later over newer bytes.
  RawMap raw(file_.path());
  ivshmfs_control* c = raw.control(0);
  poke(c->reserve_end, peek(c->head) + 500);
  poke(c->owner_heartbeat_ns, 1);
  poke(c->owner_pid_ns, 0);  // not provably dead
  auto other = open_region(file_.path(), true);
  ClaimOptions forced = quiet_claim();
  forced.force = true;
  auto taken = PartitionWriter::claim(other, 0, forced);
  ASSERT_FALSE(taken.ok()) << "a ring cannot fence a copy in flight";
  EXPECT_EQ(taken.error().code, Errc::claimed);
  EXPECT_NE(taken.error().message.find("is a ring"), std::string::npos) << taken.error().message;
  EXPECT_TRUE(writer_->owns()) << "the refused takeover left the claim alone";
  EXPECT_EQ(peek(c->hole_length), 0u);
  // Once that owner published (reserve_end == head), a takeover goes ahead.
  poke(c->reserve_end, peek(c->head));
  auto later = PartitionWriter::claim(other, 0, forced);
  ASSERT_TRUE(later.ok()) << later.error().message;
  EXPECT_EQ(peek(c->hole_length), 0u) << "no hole in a ring";
  auto more = stream_bytes(1000, 3 * kRing);
  for (std::size_t at = 0; at < more.size(); at += 4096) {
    auto r = (*later)->append({more.data() + at, std::min<std::size_t>(4096, more.size() - at)});
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  std::vector<std::byte> out(kRing);
  auto n = other->read(0, 1000 + 2 * kRing, out);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(first_wrong(1000 + 2 * kRing, out.data(), *n), -1);
}

TEST_F(Ring, AFenceBitAPeerStoredOnARingsHeadIsDroppedAtTheClaim) {
  write_stream(0, 5000);
  RawMap raw(file_.path());
  ivshmfs_control* c = raw.control(0);
  const uint64_t head = peek(c->head);
  poke(c->head, head | IVSHMFS_HEAD_FENCE);
  auto other = open_region(file_.path(), true);
  ClaimOptions forced = quiet_claim();
  forced.force = true;
  auto taken = PartitionWriter::claim(other, 0, forced);
  ASSERT_TRUE(taken.ok()) << taken.error().message;
  EXPECT_EQ(peek(c->head), head) << "the head keeps its value, without the bit";
  EXPECT_EQ(peek(c->hole_length), 0u) << "a ring is never fenced";
  auto more = stream_bytes(5000, 100);
  ASSERT_TRUE((*taken)->append(more).ok());
  std::vector<std::byte> out(5100);
  auto n = other->read(0, 0, out);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 5100u);
  EXPECT_EQ(first_wrong(0, out.data(), *n), -1);
}

TEST(RingStream, HundredRingsPastThreeReadersCheckingEveryByte) {
  TempFile file("ringstream", -1);
  format_ring(file.path(), 4 * kRing, 1, {{0, kRing, true}});
  auto region = open_region(file.path(), true);
  ASSERT_TRUE(region);
  auto writer = PartitionWriter::claim(region, 0, quiet_claim());
  ASSERT_TRUE(writer.ok()) << writer.error().message;
  const uint64_t total = 100 * kRing;
  std::atomic<bool> done{false};

  struct Tally {
    uint64_t read = 0, lost = 0, overruns = 0, wrong = 0, at = 0;
    std::string first_problem;
  };
  std::vector<Tally> tallies(3);
  auto reader = [&](Tally& t, std::size_t chunk, bool dawdle) {
    std::vector<std::byte> buf(chunk);
    for (;;) {
      const bool finished = done.load(std::memory_order_acquire);
      auto n = region->read(0, t.at, buf);
      if (!n.ok()) {
        if (n.error().code != Errc::overrun) {
          t.first_problem = n.error().message;
          return;
        }
        auto s = region->snapshot(0);
        if (!s.ok() || s->retained_from <= t.at) {
          if (t.first_problem.empty())
            t.first_problem = "an overrun at " + std::to_string(t.at) + " while the retained range starts at " +
                              (s.ok() ? std::to_string(s->retained_from) : s.error().message);
          return;
        }
        ++t.overruns;
        t.lost += s->retained_from - t.at;
        t.at = s->retained_from;
        continue;
      }
      if (*n == 0) {
        if (finished) return;
        std::this_thread::yield();
        continue;
      }
      const long long bad = first_wrong(t.at, buf.data(), *n);
      if (bad >= 0) {
        ++t.wrong;
        if (t.first_problem.empty())
          t.first_problem = "a wrong byte at offset " + std::to_string(t.at + static_cast<uint64_t>(bad));
      }
      t.read += *n;
      t.at += *n;
      if (dawdle) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  };
  std::vector<std::thread> readers;
  readers.emplace_back(reader, std::ref(tallies[0]), std::size_t{64 * 1024}, false);
  readers.emplace_back(reader, std::ref(tallies[1]), std::size_t{4096}, false);
  readers.emplace_back(reader, std::ref(tallies[2]), std::size_t{777}, true);
  uint64_t written = 0;
  std::size_t chunk = 1;
  while (written < total) {
    const std::size_t k = static_cast<std::size_t>(std::min<uint64_t>(total - written, chunk));
    auto bytes = stream_bytes(written, k);
    auto r = (*writer)->append(bytes);
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(*r, k);
    written += k;
    chunk = chunk * 7 % 9973 + 1;  // from 1 byte to ~10 KB, wrapping at odd places
  }
  done.store(true, std::memory_order_release);
  for (auto& t : readers) t.join();
  uint64_t overruns = 0;
  for (std::size_t i = 0; i < tallies.size(); ++i) {
    const Tally& t = tallies[i];
    EXPECT_EQ(t.first_problem, "") << "reader " << i;
    EXPECT_EQ(t.wrong, 0u) << "reader " << i << " got bytes that were not at the offsets it asked for";
    EXPECT_EQ(t.read + t.lost, total) << "reader " << i << ": every byte is either read or reported lost, exactly";
    EXPECT_EQ(t.at, total) << "reader " << i;
    overruns += t.overruns;
    std::printf("reader %zu: read %llu, lost %llu in %llu overruns\n", i, static_cast<unsigned long long>(t.read),
                static_cast<unsigned long long>(t.lost), static_cast<unsigned long long>(t.overruns));
  }
  auto s = region->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, total);
  EXPECT_EQ(s->retained_from, total - kRing);
}

TEST(RingLayout, FlagWithoutFeatureBitFeatureWithoutFlagAndUnknownFlagsAreRefused) {
  TempFile file("ringbits", -1);
  format_ring(file.path(), 4 * kRing, 2, {{1, 0, true}});
  {
    RawMap raw(file.path());
    EXPECT_EQ(raw.header()->features, IVSHMFS_FEATURE_RING);
    raw.header()->features = 0;
  }
  auto r = Region::open_path(file.path(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::corrupt_partition_table);
  EXPECT_NE(r.error().message.find("without the ring feature bit"), std::string::npos) << r.error().message;
  {
    RawMap raw(file.path());
    raw.header()->features = IVSHMFS_FEATURE_RING;
    raw.table()[1].flags = 0;
  }
  r = Region::open_path(file.path(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::corrupt_header);
  EXPECT_NE(r.error().message.find("no partition is a ring"), std::string::npos) << r.error().message;
  {
    RawMap raw(file.path());
    raw.table()[1].flags = IVSHMFS_PARTITION_RING | 2u;
  }
  r = Region::open_path(file.path(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("unknown flags"), std::string::npos) << r.error().message;
  {
    RawMap raw(file.path());
    raw.table()[1].flags = IVSHMFS_PARTITION_RING;
  }
  r = Region::open_path(file.path(), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
}

TEST(RingLayout, HostileControlWordsNeverReadOutsideTheRing) {
  TempFile file("ringhostile", -1);
  format_ring(file.path(), 4 * kRing, 1, {}, true);
  auto region = open_region(file.path(), false);
  ASSERT_TRUE(region);
  const uint64_t capacity = region->find(0)->capacity;
  RawMap raw(file.path());
  ivshmfs_control* c = raw.control(0);
  std::vector<std::byte> out(2 * capacity);
  const uint64_t values[] = {0, 1, kRing - 1, kRing, kRing + 1, 1ULL << 62, (1ULL << 63) | 5, UINT64_MAX};
  for (uint64_t head : values) {
    for (uint64_t base : values) {
      for (uint64_t reserve : values) {
        poke(c->head, head);
        poke(c->base, base);
        poke(c->reserve_end, reserve);
        auto s = region->snapshot(0);
        ASSERT_TRUE(s.ok());
        EXPECT_LE(s->retained_from, s->length);
        EXPECT_LE(s->length - s->retained_from, capacity) << "never more than a ring is retained";
        for (uint64_t offset : {uint64_t{0}, s->retained_from, s->length - std::min<uint64_t>(s->length, 10)}) {
          auto n = region->read(0, offset, out);
          if (n.ok()) {
            EXPECT_LE(*n, capacity);
          }
        }
      }
    }
  }
}

TEST(PartitionSizes, SizedPartitionsAndTheRestSharedOut) {
  TempFile file("sizes", -1);
  const uint64_t size = 4 << 20;
  format_ring(file.path(), size, 4, {{0, 1 << 20, false}, {2, 64 * 1024, true}});
  auto region = open_region(file.path(), false);
  ASSERT_TRUE(region);
  const uint64_t data_offset = region->info().data_offset;
  const uint64_t share = (size - data_offset - (1 << 20) - 64 * 1024) / 2 / 4096 * 4096;
  EXPECT_EQ(region->find(0)->capacity, uint64_t{1} << 20);
  EXPECT_EQ(region->find(1)->capacity, share);
  EXPECT_EQ(region->find(2)->capacity, 64u * 1024);
  EXPECT_TRUE(region->find(2)->ring);
  EXPECT_EQ(region->find(3)->capacity, share);
  EXPECT_FALSE(region->find(3)->ring);
  EXPECT_EQ(region->find(0)->data_offset, data_offset);
  EXPECT_EQ(region->find(3)->data_offset + share, data_offset + (1 << 20) + 64 * 1024 + 2 * share);
}

TEST(PartitionSizes, InvalidSpecsAreRefusedClearly) {
  TempFile file("badsizes", 1 << 20);
  auto backend = Backend::open(file.path(), BackendOptions{true, false, 0});
  ASSERT_TRUE(backend.ok());
  struct Case {
    std::vector<PartitionLayout> layout;
    Errc code;
    std::string says;
  } cases[] = {
      {{{4, 8192, false}}, Errc::invalid_argument, "partition 4: no such partition"},
      {{{1, 8192, false}, {1, 4096, false}}, Errc::invalid_argument, "given more than once"},
      {{{0, 5000, false}}, Errc::invalid_argument, "not a positive multiple of the page size"},
      {{{0, 1 << 20, false}}, Errc::region_too_small, "too small for 4 partitions"},
      {{{0, 512 * 1024, false}, {1, 512 * 1024, false}}, Errc::region_too_small, "too small"},
      {{{0, UINT64_MAX / 4096 * 4096, false}, {1, UINT64_MAX / 4096 * 4096, false}},
       Errc::region_too_small,
       "too small"},
  };
  for (const Case& c : cases) {
    FormatOptions options;
    options.layout = c.layout;
    auto r = Region::format(**backend, options);
    ASSERT_FALSE(r.ok()) << c.says;
    EXPECT_EQ(r.error().code, c.code) << r.error().message;
    EXPECT_NE(r.error().message.find(c.says), std::string::npos) << r.error().message;
  }
  RawMap raw(file.path());
  EXPECT_EQ(raw.header()->magic, 0u) << "a refused format writes nothing";
}

TEST(RingCApi, AppendReadStatOverrunAndEfbig) {
  TempFile file("ringc", -1);
  format_ring(file.path(), 4 * kRing, 2, {{0, kRing, true}});
  ivshmfs_open_options options{};
  options.backend = file.path().c_str();
  options.flags = IVSHMFS_OPEN_WRITE;
  options.id = 0;
  ivshmfs_region* handle = nullptr;
  ASSERT_EQ(ivshmfs_open(&options, &handle), 0) << ivshmfs_last_error();
  auto bytes = stream_bytes(0, 3 * kRing);
  for (std::size_t at = 0; at < bytes.size(); at += 8192) {
    ASSERT_EQ(ivshmfs_append(handle, bytes.data() + at, 8192), 8192) << ivshmfs_last_error();
  }
  std::vector<std::byte> big(kRing + 4096);
  EXPECT_EQ(ivshmfs_append(handle, big.data(), big.size()), -EFBIG);
  ivshmfs_partition_stat st{};
  ASSERT_EQ(ivshmfs_stat(handle, 0, &st), 0);
  EXPECT_EQ(st.length, 3 * kRing);
  EXPECT_EQ(st.flags & IVSHMFS_STAT_RING, IVSHMFS_STAT_RING);
  EXPECT_EQ(st.retained_from, 2 * kRing);
  std::vector<std::byte> out(4096);
  EXPECT_EQ(ivshmfs_read(handle, 0, 0, out.data(), out.size()), -EPIPE);
  EXPECT_NE(std::string(ivshmfs_last_error()).find("overwrote"), std::string::npos) << ivshmfs_last_error();
  ASSERT_EQ(ivshmfs_read(handle, 0, st.retained_from, out.data(), out.size()), 4096);
  EXPECT_EQ(first_wrong(st.retained_from, out.data(), 4096), -1);
  ivshmfs_close(handle);
}

}  // namespace
}  // namespace ivshmfs::test
