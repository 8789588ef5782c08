// SPDX-License-Identifier: MIT
// Region::open on hostile bytes: every header and partition-table field
// corrupted one at a time, random bytes over the metadata, and too-small,
// blank and mis-sized files. A corrupt region must give a clean error naming
// what is wrong, never a crash, never a read outside the mapping (the
// mapping is surrounded by PROT_NONE guard pages) and never a write (it is
// mapped read-only).
#include <algorithm>
#include <cinttypes>
#include <functional>
#include <map>
#include <random>
#include <set>

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPartitions = 4;
constexpr uint64_t kCapacity = 8192;
constexpr uint64_t kSize = IVSHMFS_PAGE_SIZE + kPartitions * kCapacity;  // 36 KiB, a page multiple
// Where format puts the control blocks: round_up(128 + 4 * 32, 128).
constexpr uint64_t kControlOffset = 256;

// The metadata page of a freshly formatted region, as a private image.
struct Image {
  ivshmfs_header header{};
  ivshmfs_partition_entry table[IVSHMFS_MAX_PARTITIONS]{};
};

class LayoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    format_file(file_.path(), kSize, kPartitions);
    RawMap raw(file_.path());
    ASSERT_EQ(raw.size(), kSize);
    pristine_.assign(raw.data(), raw.data() + IVSHMFS_PAGE_SIZE);
    std::memcpy(&image_, pristine_.data(), sizeof image_);
    ASSERT_EQ(image_.header.magic, IVSHMFS_MAGIC);
    ASSERT_EQ(image_.header.partition_count, kPartitions);
    ASSERT_EQ(image_.table[0].capacity, kCapacity);
    ASSERT_EQ(image_.header.control_offset, kControlOffset);
  }

  // Writes `image` over the metadata of the file, the rest of the first page as formatted.
  void write_image(const Image& image) {
    RawMap raw(file_.path());
    std::memcpy(raw.data(), pristine_.data(), pristine_.size());
    std::memcpy(raw.data(), &image, sizeof image);
  }

  // Opens the file read-only between guard pages.
  Result<std::shared_ptr<Region>> open_guarded_region(GuardPages& guards) {
    auto backend = open_guarded(file_.path(), BackendOptions{false, false, 0}, guards);
    if (!backend.ok()) {
      ADD_FAILURE() << "guarded open: " << backend.error().message;
      return std::move(backend).error();
    }
    EXPECT_TRUE(guards.armed());
    return Region::open(std::move(backend).value());
  }

  TempFile file_{"layout"};
  std::vector<std::byte> pristine_;
  Image image_{};
};

TEST_F(LayoutTest, PristineRegionOpens) {
  GuardPages guards;
  auto region = open_guarded_region(guards);
  ASSERT_TRUE(region.ok()) << region.error().message;
  EXPECT_EQ((*region)->info().partition_count, kPartitions);
  EXPECT_EQ((*region)->info().region_size, kSize);
  ASSERT_EQ((*region)->partitions().size(), kPartitions);
  for (uint32_t i = 0; i < kPartitions; ++i) {
    EXPECT_EQ((*region)->partitions()[i].id, i);
    EXPECT_EQ((*region)->partitions()[i].capacity, kCapacity);
  }
}

// The guard pages really catch a read one byte past either end.
TEST_F(LayoutTest, GuardPagesCatchOutOfBoundsReads) {
  for (const long delta : {static_cast<long>(kSize), -1L}) {
    auto outcome = run_in_child([&]() -> std::string {
      GuardPages guards;
      auto backend = open_guarded(file_.path(), BackendOptions{false, false, 0}, guards);
      if (!backend.ok()) return backend.error().message;
      const volatile std::byte* p = (*backend)->bytes().data();
      (void)p[delta];
      return "reading byte " + std::to_string(delta) + " of the mapping did not fault";
    });
    // A plain build dies of SIGSEGV; under AddressSanitizer its SEGV handler
    // reports the access and aborts or exits non-zero. Either way the child
    // must not get past the read (it reports nothing itself).
    const bool faulted = WIFSIGNALED(outcome.status) ||
                         (WIFEXITED(outcome.status) && WEXITSTATUS(outcome.status) != 0 && outcome.output.empty());
    EXPECT_TRUE(faulted) << "offset " << delta << ": child " << describe_status(outcome.status) << " "
                         << outcome.output;
#if !defined(__SANITIZE_ADDRESS__)
    EXPECT_TRUE(WIFSIGNALED(outcome.status) && WTERMSIG(outcome.status) == SIGSEGV)
        << "offset " << delta << ": child " << describe_status(outcome.status);
#endif
  }
}

struct Corruption {
  std::string name;
  std::function<void(Image&)> apply;
  Errc expected;
  std::vector<std::string> message_parts;  // each must appear in the message
};

std::string show(const Corruption& c) { return c.name; }

std::vector<Corruption> corruptions() {
  const uint64_t ctl = kControlOffset;
  const uint64_t u64max = UINT64_MAX;
  std::vector<Corruption> list = {
      // magic
      {"magic zero", [](Image& m) { m.header.magic = 0; }, Errc::not_formatted, {"not formatted"}},
      {"magic other", [](Image& m) { m.header.magic = 0x1234; }, Errc::bad_magic, {"magic", "0x1234"}},
      {"magic one bit off", [](Image& m) { m.header.magic ^= uint64_t{1} << 60; }, Errc::bad_magic, {"magic"}},
      {"magic all ones", [](Image& m) { m.header.magic = UINT64_MAX; }, Errc::bad_magic, {"magic"}},
      // version
      {"version 0", [](Image& m) { m.header.version = 0; }, Errc::unsupported_version, {"version 0"}},
      {"version 1 (the old layout)",
       [](Image& m) { m.header.version = 1; },
       Errc::unsupported_version,
       {"version 1", "older ivshmfs", "ivshmctl format --force", "destroys"}},
      {"version 3", [](Image& m) { m.header.version = 3; }, Errc::unsupported_version, {"version 3"}},
      {"version max", [](Image& m) { m.header.version = UINT32_MAX; }, Errc::unsupported_version, {"version"}},
      // header_size
      {"header_size 0", [](Image& m) { m.header.header_size = 0; }, Errc::corrupt_header, {"header_size 0"}},
      {"header_size 63", [](Image& m) { m.header.header_size = 63; }, Errc::corrupt_header, {"header_size 63"}},
      {"header_size 64 (version 1's)",
       [](Image& m) { m.header.header_size = 64; },
       Errc::corrupt_header,
       {"header_size 64", "not 128"}},
      // feature bits this build does not know, named
      {"features bit 5",
       [](Image& m) { m.header.features = 1U << 5; },
       Errc::unsupported_version,
       {"feature bits 0x20"}},
      {"ring feature without a ring partition",
       [](Image& m) { m.header.features = IVSHMFS_FEATURE_RING; },
       Errc::corrupt_header,
       {"feature bit ring is set but no partition is a ring"}},
      {"features bit 63",
       [](Image& m) { m.header.features = uint64_t{1} << 63; },
       Errc::unsupported_version,
       {"0x8000000000000000"}},
      // reserved words must be zero
      {"reserved word 0", [](Image& m) { m.header.reserved[0] = 1; }, Errc::corrupt_header, {"reserved word 0"}},
      {"reserved word 3", [](Image& m) { m.header.reserved[3] = 5; }, Errc::corrupt_header, {"reserved word 3"}},
      {"table_seq in a fixed table", [](Image& m) { m.header.table_seq = 2; }, Errc::corrupt_header, {"table_seq"}},
      {"table_lock in a fixed table", [](Image& m) { m.header.table_lock = 7; }, Errc::corrupt_header, {"table_lock"}},
      {"reserved32", [](Image& m) { m.header.reserved32 = 7; }, Errc::corrupt_header, {"reserved32", "0x7"}},
      {"split_pieces without the split feature",
       [](Image& m) { m.header.split_pieces = 3; },
       Errc::corrupt_header,
       {"split_pieces is 3"}},
      // the split feature: a piece holds one partition
      {"split with split_pieces 0",
       [](Image& m) { m.header.features = IVSHMFS_FEATURE_SPLIT; },
       Errc::corrupt_header,
       {"split_pieces 0"}},
      {"split with split_pieces 65",
       [](Image& m) {
         m.header.features = IVSHMFS_FEATURE_SPLIT;
         m.header.split_pieces = 65;
       },
       Errc::corrupt_header,
       {"split_pieces 65"}},
      {"split piece holding several partitions",
       [](Image& m) {
         m.header.features = IVSHMFS_FEATURE_SPLIT;
         m.header.split_pieces = 8;
       },
       Errc::corrupt_header,
       {"holds", "partitions, not 1"}},
      {"header_size max", [](Image& m) { m.header.header_size = UINT32_MAX; }, Errc::corrupt_header, {"header_size"}},
      // region_size
      {"region_size zero", [](Image& m) { m.header.region_size = 0; }, Errc::size_mismatch, {"region", " 0 bytes"}},
      {"region_size one page less",
       [](Image& m) { m.header.region_size = kSize - 4096; },
       Errc::size_mismatch,
       {"region", std::to_string(kSize - 4096)}},
      {"region_size one byte more",
       [](Image& m) { m.header.region_size = kSize + 1; },
       Errc::size_mismatch,
       {"region", std::to_string(kSize + 1)}},
      {"region_size max",
       [](Image& m) { m.header.region_size = UINT64_MAX; },
       Errc::size_mismatch,
       {"region", std::to_string(UINT64_MAX)}},
      // format_id
      {"format_id zero", [](Image& m) { m.header.format_id = 0; }, Errc::corrupt_header, {"format_id"}},
      // partition_count
      {"partition_count 0",
       [](Image& m) { m.header.partition_count = 0; },
       Errc::corrupt_header,
       {"partition_count 0"}},
      {"partition_count 65",
       [](Image& m) { m.header.partition_count = 65; },
       Errc::corrupt_header,
       {"partition_count 65"}},
      {"partition_count max",
       [](Image& m) { m.header.partition_count = UINT32_MAX; },
       Errc::corrupt_header,
       {"partition_count"}},
      // One more partition than the table holds: the table runs into the control blocks.
      {"partition_count 5",
       [](Image& m) { m.header.partition_count = 5; },
       Errc::corrupt_header,
       {"control_offset", "partition table"}},
      {"partition_count 7",
       [](Image& m) { m.header.partition_count = 7; },
       Errc::corrupt_header,
       {"control_offset", "partition table"}},
      {"partition_count 64", [](Image& m) { m.header.partition_count = 64; }, Errc::corrupt_header, {"control_offset"}},
      // page_size
      {"page_size 0", [](Image& m) { m.header.page_size = 0; }, Errc::corrupt_header, {"page_size 0"}},
      {"page_size 2048", [](Image& m) { m.header.page_size = 2048; }, Errc::corrupt_header, {"page_size 2048"}},
      {"page_size 65536", [](Image& m) { m.header.page_size = 65536; }, Errc::corrupt_header, {"page_size"}},
      // control_offset
      {"control_offset 0", [](Image& m) { m.header.control_offset = 0; }, Errc::corrupt_header, {"control_offset 0x0"}},
      {"control_offset misaligned",
       [=](Image& m) { m.header.control_offset = ctl + 8; },
       Errc::corrupt_header,
       {"control_offset 0x108"}},
      {"control_offset overflows",
       [=](Image& m) { m.header.control_offset = u64max - 127; },
       Errc::corrupt_header,
       {"control_offset 0xffffffffffffff80"}},
      {"control_offset past the end",
       [](Image& m) { m.header.control_offset = kSize; },
       Errc::corrupt_header,
       {"control blocks"}},
      {"control_offset moved, entries not",
       [=](Image& m) { m.header.control_offset = ctl + 128; },
       Errc::corrupt_partition_table,
       {"entry 0", "control_offset"}},
      // data_offset
      {"data_offset 0", [](Image& m) { m.header.data_offset = 0; }, Errc::corrupt_header, {"data_offset 0x0"}},
      {"data_offset misaligned",
       [](Image& m) { m.header.data_offset = 4096 + 8; },
       Errc::corrupt_header,
       {"data_offset 0x1008"}},
      {"data_offset past the end",
       [](Image& m) { m.header.data_offset = kSize + 4096; },
       Errc::corrupt_header,
       {"data_offset", "past the end"}},
      {"data_offset huge",
       [=](Image& m) { m.header.data_offset = u64max & ~uint64_t{4095}; },
       Errc::corrupt_header,
       {"data_offset 0xfffffffffffff000"}},
      {"data_offset above the first data area",
       [](Image& m) { m.header.data_offset = 8192; },
       Errc::corrupt_partition_table,
       {"entry 0", "data_offset"}},
  };

  // Partition-table entries: the first, a middle and the last.
  for (uint32_t e : {0u, 1u, kPartitions - 1}) {
    const std::string entry = "entry " + std::to_string(e);
    const uint32_t other = e == 0 ? 1 : 0;
    // The error names the entry, except for duplicates and overlaps, which
    // are found at the second entry involved.
    auto add = [&](const std::string& what, std::function<void(ivshmfs_partition_entry&, Image&)> f, Errc code,
                   std::vector<std::string> parts, bool names_entry = true) {
      if (names_entry) parts.insert(parts.begin(), entry);
      list.push_back({entry + " " + what, [f, e](Image& m) { f(m.table[e], m); }, code, parts});
    };
    add("id 64", [](auto& t, auto&) { t.id = 64; }, Errc::corrupt_partition_table, {"id 64", "out of range"});
    add("id max", [](auto& t, auto&) { t.id = UINT32_MAX; }, Errc::corrupt_partition_table, {"id 4294967295"});
    add(
        "duplicate id", [other](auto& t, auto& m) { t.id = m.table[other].id; }, Errc::corrupt_partition_table,
        {"used twice"}, false);
    add("unknown flags", [](auto& t, auto&) { t.flags = 2; }, Errc::corrupt_partition_table, {"unknown flags 0x2"});
    add("ring flag without the feature bit", [](auto& t, auto&) { t.flags = IVSHMFS_PARTITION_RING; },
        Errc::corrupt_partition_table, {"flag ring (0x1) without the ring feature bit"});
    add("control_offset 0", [](auto& t, auto&) { t.control_offset = 0; }, Errc::corrupt_partition_table,
        {"control_offset 0x0"});
    add("control_offset of another entry",
        [other](auto& t, auto& m) { t.control_offset = m.table[other].control_offset; }, Errc::corrupt_partition_table,
        {"control_offset"});
    add("control_offset max", [](auto& t, auto&) { t.control_offset = UINT64_MAX; }, Errc::corrupt_partition_table,
        {"control_offset 0xffffffffffffffff"});
    add("data_offset 0", [](auto& t, auto&) { t.data_offset = 0; }, Errc::corrupt_partition_table, {"data_offset 0x0"});
    add("data_offset misaligned", [](auto& t, auto&) { t.data_offset += 1; }, Errc::corrupt_partition_table,
        {"data_offset"});
    add(
        "data_offset of another entry", [other](auto& t, auto& m) { t.data_offset = m.table[other].data_offset; },
        Errc::corrupt_partition_table, {"overlap"}, false);
    add("data_offset past the end", [](auto& t, auto&) { t.data_offset = kSize; }, Errc::corrupt_partition_table,
        {"data area", "past the end"});
    add("data_offset overflows", [](auto& t, auto&) { t.data_offset = UINT64_MAX & ~uint64_t{4095}; },
        Errc::corrupt_partition_table, {"data area 0xfffffffffffff000", "past the end"});
    add("capacity 0", [](auto& t, auto&) { t.capacity = 0; }, Errc::corrupt_partition_table, {"capacity 0"});
    add("capacity 100", [](auto& t, auto&) { t.capacity = 100; }, Errc::corrupt_partition_table, {"capacity 100"});
    add("capacity not a page multiple", [](auto& t, auto&) { t.capacity = kCapacity + 1; },
        Errc::corrupt_partition_table, {"capacity 8193"});
    add("capacity overflows", [](auto& t, auto&) { t.capacity = UINT64_MAX & ~uint64_t{4095}; },
        Errc::corrupt_partition_table, {"data area", "past the end"});
    add("capacity past the end", [](auto& t, auto&) { t.capacity = kSize; }, Errc::corrupt_partition_table,
        {"data area", "past the end"});
  }
  // Overlaps that stay inside the region, so only the overlap check can catch them.
  list.push_back({"entries 0 and 1 overlap",
                  [](Image& m) { m.table[0].capacity = 2 * kCapacity; },
                  Errc::corrupt_partition_table,
                  {"data areas of partitions 0 and 1 overlap"}});
  list.push_back({"entries 1 and 2 share a data area",
                  [](Image& m) { m.table[2].data_offset = m.table[1].data_offset; },
                  Errc::corrupt_partition_table,
                  {"overlap"}});
  list.push_back({"entry 3 inside entry 0",
                  [](Image& m) {
                    m.table[0].capacity = 3 * kCapacity;
                    m.table[3].data_offset = m.table[0].data_offset + kCapacity;
                  },
                  Errc::corrupt_partition_table,
                  {"overlap"}});
  return list;
}

TEST_F(LayoutTest, EveryCorruptFieldGivesItsError) {
  const auto list = corruptions();
  // Every header field appears in at least one case.
  for (const char* field : {"magic", "version", "header_size", "region_size", "format_id", "partition_count",
                            "page_size", "control_offset", "data_offset", "features", "reserved"}) {
    EXPECT_TRUE(std::any_of(list.begin(), list.end(), [&](const Corruption& c) { return c.name.starts_with(field); }))
        << "no corruption case for header field " << field;
  }
  for (const Corruption& c : list) {
    SCOPED_TRACE(show(c));
    Image image = image_;
    c.apply(image);
    write_image(image);
    GuardPages guards;
    auto region = open_guarded_region(guards);
    ASSERT_FALSE(region.ok()) << c.name << ": corrupt region opened";
    EXPECT_EQ(region.error().code, c.expected) << c.name << ": got " << to_string(region.error().code) << " ("
                                               << region.error().message << "), expected " << to_string(c.expected);
    EXPECT_NE(region.error().message.find(file_.path()), std::string::npos)
        << c.name << ": message does not name the file: " << region.error().message;
    for (const auto& part : c.message_parts) {
      EXPECT_NE(region.error().message.find(part), std::string::npos)
          << c.name << ": message lacks '" << part << "': " << region.error().message;
    }
    EXPECT_LT(region.error().negative_errno(), 0);
  }
}

// A table that differs from what format writes but passes every rule opens:
// readers must accept any valid placement, not only the default one.
TEST_F(LayoutTest, ValidNonDefaultTableOpens) {
  Image image = image_;
  image.header.partition_count = 3;  // drop the last entry; its data area is unused
  std::swap(image.table[0].data_offset, image.table[2].data_offset);
  image.table[1].id = 42;
  write_image(image);
  GuardPages guards;
  auto region = open_guarded_region(guards);
  ASSERT_TRUE(region.ok()) << region.error().message;
  EXPECT_EQ((*region)->info().partition_count, 3u);
  ASSERT_NE((*region)->find(42), nullptr);
  EXPECT_EQ((*region)->find(1), nullptr);
  EXPECT_EQ((*region)->find(3), nullptr);
  auto missing = (*region)->stat(3);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, Errc::no_such_partition);
}

// One fuzz iteration's outcome; the region must never crash the process.
void exercise(const Region& region, uint64_t mapping_size) {
  std::set<uint32_t> ids;
  std::vector<std::pair<uint64_t, uint64_t>> areas;
  for (const auto& p : region.partitions()) {
    EXPECT_TRUE(ids.insert(p.id).second) << "duplicate id " << p.id << " accepted";
    EXPECT_LT(p.id, IVSHMFS_MAX_PARTITIONS);
    EXPECT_LE(p.data_offset + p.capacity, mapping_size);
    EXPECT_GE(p.data_offset, region.info().data_offset);
    EXPECT_LE(p.control_offset + sizeof(ivshmfs_control), region.info().data_offset);
    areas.emplace_back(p.data_offset, p.capacity);
    // Reads and stats stay inside the mapping whatever the control block says.
    auto s = region.stat(p.id);
    if (s.ok()) {
      EXPECT_LE(s->length, p.capacity);
    } else {
      EXPECT_EQ(s.error().code, Errc::busy) << s.error().message;
    }
    std::vector<std::byte> buf(static_cast<std::size_t>(p.capacity) + 64);
    for (uint64_t offset : {uint64_t{0}, p.capacity / 2, p.capacity - 1, p.capacity, UINT64_MAX}) {
      auto n = region.read(p.id, offset, buf);
      if (n.ok()) {
        EXPECT_LE(*n, p.capacity - std::min(offset, p.capacity));
      } else {
        EXPECT_EQ(n.error().code, Errc::busy) << n.error().message;
      }
    }
  }
  std::sort(areas.begin(), areas.end());
  for (std::size_t i = 1; i < areas.size(); ++i) {
    EXPECT_LE(areas[i - 1].first + areas[i - 1].second, areas[i].first) << "overlapping data areas accepted";
  }
}

TEST_F(LayoutTest, RandomMetadataNeverCrashes) {
  std::mt19937_64 rng(0x1f5e5eedULL);
  constexpr int kIterations = 4000;
  const std::size_t table_bytes = sizeof(ivshmfs_header) + IVSHMFS_MAX_PARTITIONS * sizeof(ivshmfs_partition_entry);
  std::map<std::string, int> outcomes;
  auto interesting = [&]() -> uint64_t {
    switch (rng() % 12) {
      case 0: return 0;
      case 1: return 1;
      case 2: return UINT64_MAX;
      case 3: return UINT64_MAX - (rng() % 8192);
      case 4: return kSize;
      case 5: return kSize - 4096;
      case 6: return (rng() % 16) * 4096;
      case 7: return (rng() % 64) * 128;
      case 8: return rng() % 128;
      case 9: return uint64_t{1} << (rng() % 64);
      case 10: return (rng() % (kSize + 8192));
      default: return rng();
    }
  };
  for (int i = 0; i < kIterations; ++i) {
    RawMap raw(file_.path());
    std::memcpy(raw.data(), pristine_.data(), pristine_.size());
    auto* bytes = reinterpret_cast<unsigned char*>(raw.data());
    const int mode = i % 5;
    if (mode == 0) {
      // Random bytes over the whole header and table.
      for (std::size_t b = 0; b < table_bytes; ++b) bytes[b] = static_cast<unsigned char>(rng());
    } else if (mode == 1) {
      // Valid-looking header (magic, version, sizes), the rest random.
      for (std::size_t b = 0; b < table_bytes; ++b) bytes[b] = static_cast<unsigned char>(rng());
      ivshmfs_header& h = *raw.header();
      h.magic = IVSHMFS_MAGIC;
      h.version = IVSHMFS_LAYOUT_VERSION;
      h.header_size = sizeof(ivshmfs_header);
      h.region_size = kSize;
      h.partition_count = static_cast<uint32_t>(1 + rng() % 4);
      h.page_size = IVSHMFS_PAGE_SIZE;
      if (rng() % 2 != 0) h.control_offset = kControlOffset;
      if (rng() % 2 != 0) h.data_offset = 4096;
    } else if (mode == 2 || mode == 3) {
      // A valid region with a few fields (header, table or control blocks) set to edge values.
      const int fields = 1 + static_cast<int>(rng() % 3);
      for (int f = 0; f < fields; ++f) {
        // Any naturally aligned 4- or 8-byte slot of the metadata page up to the control blocks' end.
        const std::size_t limit = kControlOffset + kPartitions * sizeof(ivshmfs_control);
        const bool wide = rng() % 2 != 0;
        const std::size_t slot = wide ? (rng() % (limit / 8)) * 8 : (rng() % (limit / 4)) * 4;
        const uint64_t value = interesting();
        if (wide) {
          std::memcpy(bytes + slot, &value, 8);
        } else {
          const auto narrow = static_cast<uint32_t>(value);
          std::memcpy(bytes + slot, &narrow, 4);
        }
      }
    } else {
      // A few random bytes flipped anywhere in the metadata page.
      const int flips = 1 + static_cast<int>(rng() % 8);
      for (int f = 0; f < flips; ++f) bytes[rng() % IVSHMFS_PAGE_SIZE] ^= static_cast<unsigned char>(1 + rng() % 255);
    }
    // A stuck reset (odd generation) makes reads spin until Errc::busy: keep
    // that rare so the run stays short, but let it happen.
    for (uint32_t p = 0; p < kPartitions; ++p) {
      auto* c = reinterpret_cast<ivshmfs_control*>(bytes + kControlOffset + p * sizeof(ivshmfs_control));
      if (c->generation % 2 != 0 && rng() % 16 != 0) c->generation &= ~uint64_t{1};
    }

    GuardPages guards;
    auto region = open_guarded_region(guards);
    if (region.ok()) {
      outcomes["ok"]++;
      exercise(**region, kSize);
    } else {
      outcomes[to_string(region.error().code)]++;
      EXPECT_FALSE(region.error().message.empty());
      EXPECT_NE(region.error().message.find(file_.path()), std::string::npos) << region.error().message;
      const Errc code = region.error().code;
      EXPECT_TRUE(code == Errc::not_formatted || code == Errc::bad_magic || code == Errc::unsupported_version ||
                  code == Errc::size_mismatch || code == Errc::corrupt_header || code == Errc::corrupt_partition_table)
          << "iteration " << i << ": unexpected " << to_string(code) << ": " << region.error().message;
    }
    if (HasFailure()) {
      ADD_FAILURE() << "stopping at iteration " << i << " (mode " << mode << ")";
      break;
    }
  }
  std::string summary;
  for (const auto& [what, count] : outcomes) summary += what + "=" + std::to_string(count) + " ";
  RecordProperty("outcomes", summary);
  std::printf("outcomes of %d random regions: %s\n", kIterations, summary.c_str());
  // The mutations reach deep: some regions open, and the table checks run.
  EXPECT_GT(outcomes["ok"], 0) << summary;
  EXPECT_GT(outcomes["corrupt_partition_table"], 0) << summary;
  EXPECT_GT(outcomes["corrupt_header"], 0) << summary;
  EXPECT_GT(outcomes["bad_magic"], 0) << summary;
}

// Too small, blank, empty and mis-sized files.
TEST(LayoutFiles, TooSmallMappings) {
  for (long long size : {10LL, 63LL, 64LL, 100LL, 4096LL, 8191LL}) {
    TempFile file("small", size);
    {
      // Even a valid-looking header (the start of a real region) must not be trusted.
      TempFile real("real");
      format_file(real.path(), kSize, kPartitions);
      RawMap from(real.path());
      RawMap to(file.path());
      std::memcpy(to.data(), from.data(), std::min<std::size_t>(to.size(), from.size()));
    }
    auto backend = Backend::open(file.path(), BackendOptions{false, false, 0});
    ASSERT_TRUE(backend.ok()) << backend.error().message;
    auto region = Region::open(std::move(backend).value());
    ASSERT_FALSE(region.ok()) << size << "-byte region opened";
    EXPECT_EQ(region.error().code, Errc::region_too_small)
        << size << " bytes: " << to_string(region.error().code) << ": " << region.error().message;
    EXPECT_NE(region.error().message.find(file.path()), std::string::npos) << region.error().message;
    EXPECT_NE(region.error().message.find(std::to_string(size)), std::string::npos) << region.error().message;
  }
}

TEST(LayoutFiles, BlankSmallFileIsTooSmall) {
  TempFile file("blank-small", 100);
  auto backend = Backend::open(file.path(), BackendOptions{false, false, 0});
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  auto region = Region::open(std::move(backend).value());
  ASSERT_FALSE(region.ok());
  EXPECT_EQ(region.error().code, Errc::region_too_small) << region.error().message;
}

TEST(LayoutFiles, EmptyFile) {
  TempFile file("empty", 0);
  auto backend = Backend::open(file.path(), BackendOptions{false, false, 0});
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.error().code, Errc::region_too_small) << backend.error().message;
  EXPECT_NE(backend.error().message.find(file.path()), std::string::npos) << backend.error().message;
}

TEST(LayoutFiles, MissingFile) {
  TempFile file("missing");
  auto backend = Backend::open(file.path(), BackendOptions{false, false, 0});
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.error().code, Errc::io_error);
  EXPECT_NE(backend.error().message.find(file.path()), std::string::npos) << backend.error().message;
  EXPECT_NE(backend.error().message.find("no such file"), std::string::npos) << backend.error().message;
}

TEST(LayoutFiles, BlankFileIsNotFormatted) {
  TempFile file("blank", static_cast<long long>(kSize));
  GuardPages guards;
  auto backend = open_guarded(file.path(), BackendOptions{false, false, 0}, guards);
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  auto region = Region::open(std::move(backend).value());
  ASSERT_FALSE(region.ok());
  EXPECT_EQ(region.error().code, Errc::not_formatted) << region.error().message;
  EXPECT_NE(region.error().message.find("not formatted"), std::string::npos) << region.error().message;
  EXPECT_NE(region.error().message.find(file.path()), std::string::npos) << region.error().message;
}

TEST(LayoutFiles, SizeMismatch) {
  for (long long delta : {4096LL, -4096LL, 1LL}) {
    TempFile file("mismatch");
    format_file(file.path(), kSize, kPartitions);
    ASSERT_EQ(::truncate(file.path().c_str(), static_cast<off_t>(static_cast<long long>(kSize) + delta)), 0);
    auto backend = Backend::open(file.path(), BackendOptions{false, false, 0});
    ASSERT_TRUE(backend.ok()) << backend.error().message;
    auto region = Region::open(std::move(backend).value());
    ASSERT_FALSE(region.ok()) << "size changed by " << delta << " but the region opened";
    EXPECT_EQ(region.error().code, Errc::size_mismatch) << region.error().message;
    EXPECT_NE(region.error().message.find(std::to_string(kSize)), std::string::npos) << region.error().message;
    EXPECT_NE(region.error().message.find(std::to_string(static_cast<long long>(kSize) + delta)), std::string::npos)
        << region.error().message;
  }
}

TEST(LayoutFiles, FormatRefusesTooSmallAndFormattedRegions) {
  TempFile file("format");
  auto backend = Backend::open(file.path(), BackendOptions{true, true, 8192});
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  FormatOptions two;
  two.partitions = 2;
  auto r = Region::format(**backend, two);
  ASSERT_FALSE(r.ok()) << "8 KiB cannot hold two partitions";
  EXPECT_EQ(r.error().code, Errc::region_too_small) << r.error().message;
  FormatOptions one;
  one.partitions = 1;
  ASSERT_TRUE(Region::format(**backend, one).ok());
  auto again = Region::format(**backend, one);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::already_formatted) << again.error().message;
  one.force = true;
  EXPECT_TRUE(Region::format(**backend, one).ok());
  for (uint32_t count : {0u, 65u}) {
    FormatOptions bad;
    bad.partitions = count;
    bad.force = true;
    auto rejected = Region::format(**backend, bad);
    ASSERT_FALSE(rejected.ok()) << count << " partitions accepted";
    EXPECT_EQ(rejected.error().code, Errc::invalid_argument) << rejected.error().message;
  }
  auto read_only = Backend::open(file.path(), BackendOptions{false, false, 0});
  ASSERT_TRUE(read_only.ok());
  auto refused = Region::format(**read_only, one);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::read_only) << refused.error().message;
}

}  // namespace
}  // namespace ivshmfs::test
