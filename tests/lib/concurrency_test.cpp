// SPDX-License-Identifier: MIT
// A writer process appends checksummed records of random sizes, with resets
// in between, while reader processes take snapshots continuously and verify
// every record: checksum, one epoch (generation) per snapshot, sequence
// numbers contiguous from 0 (nothing lost, nothing torn).
#include <sys/mman.h>

#include <optional>
#include <random>

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPartitions = 2;
constexpr uint64_t kCapacity = 256 * 1024;
constexpr uint64_t kSize = IVSHMFS_PAGE_SIZE + kPartitions * kCapacity;
constexpr uint32_t kRecordMagic = 0x52454344;  // "DCER"
constexpr int kRecords = 5000;
constexpr int kReaders = 3;
constexpr uint32_t kPartition = 1;

struct RecordHeader {
  uint32_t magic;
  uint32_t size;      // whole record, header included
  uint64_t seq;       // 0, 1, 2, ... within an epoch
  uint64_t epoch;     // resets the writer had done before this record
  uint64_t checksum;  // FNV-1a of the header (checksum zero) and the payload
};
static_assert(sizeof(RecordHeader) == 32);

uint64_t record_checksum(RecordHeader header, const std::byte* payload, std::size_t size) {
  header.checksum = 0;
  return fnv1a(payload, size, fnv1a(&header, sizeof header));
}

// State the processes share (an anonymous shared mapping made before fork).
struct Shared {
  std::atomic<int> readers_ready;
  std::atomic<int> writer_done;
  std::atomic<uint64_t> final_epoch;
  std::atomic<uint64_t> final_count;
  std::atomic<uint64_t> snapshots[kReaders];
  std::atomic<uint64_t> records_checked[kReaders];
  std::atomic<uint64_t> epochs_seen[kReaders];
};

// Verifies one snapshot; returns "" or what is wrong. `epoch` gets the snapshot's epoch.
std::string verify(std::span<const std::byte> bytes, uint64_t expected_epoch, uint64_t* records) {
  std::size_t offset = 0;
  uint64_t seq = 0;
  while (offset < bytes.size()) {
    const std::size_t left = bytes.size() - offset;
    const std::string where = "record " + std::to_string(seq) + " at offset " + std::to_string(offset) + " of " +
                              std::to_string(bytes.size()) + ": ";
    if (left < sizeof(RecordHeader)) return where + "torn header (" + std::to_string(left) + " bytes left)";
    RecordHeader h{};
    std::memcpy(&h, bytes.data() + offset, sizeof h);
    if (h.magic != kRecordMagic) return where + "bad record magic";
    if (h.size < sizeof h || h.size > left) {
      return where + "torn record (size " + std::to_string(h.size) + ", " + std::to_string(left) + " bytes left)";
    }
    const std::byte* payload = bytes.data() + offset + sizeof h;
    if (record_checksum(h, payload, h.size - sizeof h) != h.checksum) return where + "checksum mismatch";
    if (h.epoch != expected_epoch) {
      return where + "from epoch " + std::to_string(h.epoch) + " in a snapshot of epoch " +
             std::to_string(expected_epoch) + " (mixed generations)";
    }
    if (h.seq != seq) return where + "sequence " + std::to_string(h.seq) + " where " + std::to_string(seq) + " was due";
    offset += h.size;
    ++seq;
  }
  *records = seq;
  return {};
}

std::string writer_body(const std::string& path, Shared* shared) {
  RegionOpenOptions options;
  options.writable = true;
  auto region = Region::open_path(path, options);
  if (!region.ok()) return "writer: " + region.error().message;
  auto writer = PartitionWriter::claim(*region, kPartition);
  if (!writer.ok()) return "writer: " + writer.error().message;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (shared->readers_ready.load() < kReaders) {
    if (std::chrono::steady_clock::now() > deadline) return "writer: readers never started";
    std::this_thread::yield();
  }
  std::mt19937_64 rng(20160601);
  uint64_t epoch = 0, seq = 0, length = 0;
  std::vector<std::byte> record;
  for (int i = 0; i < kRecords; ++i) {
    const std::size_t size = sizeof(RecordHeader) + static_cast<std::size_t>(rng() % 3000);
    if (length + size > kCapacity || rng() % 64 == 0) {
      if (auto r = (*writer)->reset(); !r.ok()) return "writer: reset: " + r.error().message;
      ++epoch;
      seq = 0;
      length = 0;
    }
    record.resize(size);
    for (std::size_t b = sizeof(RecordHeader); b < size; ++b) record[b] = static_cast<std::byte>(rng());
    RecordHeader h{kRecordMagic, static_cast<uint32_t>(size), seq, epoch, 0};
    h.checksum = record_checksum(h, record.data() + sizeof h, size - sizeof h);
    std::memcpy(record.data(), &h, sizeof h);
    auto n = (*writer)->append(record);
    if (!n.ok()) return "writer: append " + std::to_string(i) + ": " + n.error().message;
    if (*n != size) return "writer: short append " + std::to_string(*n) + " of " + std::to_string(size);
    length += size;
    ++seq;
  }
  auto s = (*region)->stat(kPartition);
  if (!s.ok() || s->length != length) return "writer: committed length disagrees with what was appended";
  shared->final_epoch.store(epoch);
  shared->final_count.store(seq);
  shared->writer_done.store(1);
  return {};
}

std::string reader_body(const std::string& path, Shared* shared, int index, uint64_t generation0) {
  auto region = Region::open_path(path, RegionOpenOptions{});  // read-only mapping
  if (!region.ok()) return "reader: " + region.error().message;
  const Region& r = **region;
  std::vector<std::byte> buf(kCapacity);
  std::vector<std::byte> chunked;
  uint64_t last_epoch = 0;
  uint64_t snapshot = 0;
  shared->readers_ready.fetch_add(1);
  for (;; ++snapshot) {
    const bool done = shared->writer_done.load() != 0;
    const std::string who = "reader " + std::to_string(index) + " snapshot " + std::to_string(snapshot) + ": ";
    std::span<const std::byte> bytes;
    uint64_t generation = 0;
    // Three ways to read: one whole-partition read, a zero-copy view, and
    // chunked reads that must all report the same generation.
    const int mode = done ? 0 : static_cast<int>(snapshot % 3);
    if (mode == 0) {
      auto n = r.read(kPartition, 0, buf, &generation);
      if (!n.ok()) return who + n.error().message;
      bytes = std::span(buf).first(*n);
    } else if (mode == 1) {
      auto v = r.view(kPartition, 0, kCapacity);
      if (!v.ok()) return who + v.error().message;
      uint64_t records = 0;
      const std::string problem = verify(v->bytes, (v->generation - generation0) / 2, &records);
      // A view is only good while its generation holds.
      if (!r.generation_unchanged(kPartition, v->generation)) continue;
      if (!problem.empty()) return who + "view: " + problem;
      shared->records_checked[index].fetch_add(records);
      continue;
    } else {
      chunked.clear();
      std::optional<uint64_t> first;
      bool raced = false;
      for (;;) {
        std::byte chunk[4096];
        uint64_t g = 0;
        auto n = r.read(kPartition, chunked.size(), chunk, &g);
        if (!n.ok()) return who + n.error().message;
        if (!first) first = g;
        if (g != *first) {
          raced = true;
          break;
        }
        if (*n == 0) break;
        chunked.insert(chunked.end(), chunk, chunk + *n);
      }
      if (raced) continue;
      generation = first.value_or(generation0);
      bytes = chunked;
    }
    if (generation % 2 != 0 || generation < generation0) {
      return who + "read returned generation " + std::to_string(generation);
    }
    const uint64_t epoch = (generation - generation0) / 2;
    if (epoch < last_epoch) {
      return who + "epoch went back from " + std::to_string(last_epoch) + " to " + std::to_string(epoch);
    }
    if (epoch != last_epoch) shared->epochs_seen[index].fetch_add(1);
    last_epoch = epoch;
    uint64_t records = 0;
    if (auto problem = verify(bytes, epoch, &records); !problem.empty()) return who + problem;
    shared->records_checked[index].fetch_add(records);
    shared->snapshots[index].fetch_add(1);
    if (done) {
      // After the writer finished: the last epoch, every record of it.
      if (epoch != shared->final_epoch.load() || records != shared->final_count.load()) {
        return who + "final snapshot has epoch " + std::to_string(epoch) + " with " + std::to_string(records) +
               " records; the writer ended in epoch " + std::to_string(shared->final_epoch.load()) + " with " +
               std::to_string(shared->final_count.load());
      }
      return {};
    }
  }
}

TEST(Concurrency, WriterAndReadersInSeparateProcesses) {
  TempFile file("concurrency");
  format_file(file.path(), kSize, kPartitions);
  uint64_t generation0 = 0;
  {
    auto region = open_region(file.path(), false);
    ASSERT_NE(region, nullptr);
    auto s = region->stat(kPartition);
    ASSERT_TRUE(s.ok());
    generation0 = s->generation;
  }
  void* mem = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* shared = new (mem) Shared{};

  std::vector<Child> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.push_back(spawn_child([&, i] { return reader_body(file.path(), shared, i, generation0); }));
    ASSERT_GE(readers.back().pid, 0) << "fork failed";
  }
  Child writer = spawn_child([&] { return writer_body(file.path(), shared); });
  ASSERT_GE(writer.pid, 0) << "fork failed";

  auto writer_outcome = wait_child(writer);
  EXPECT_TRUE(writer_outcome.ok()) << "writer " << describe_status(writer_outcome.status) << ": "
                                   << writer_outcome.output;
  if (!writer_outcome.ok()) shared->writer_done.store(1);  // lets readers end; their final check then fails
  for (int i = 0; i < kReaders; ++i) {
    auto outcome = wait_child(readers[static_cast<std::size_t>(i)]);
    EXPECT_TRUE(outcome.ok()) << "reader " << i << " " << describe_status(outcome.status) << ": " << outcome.output;
  }
  std::printf("writer: %d records, ended in epoch %llu with %llu records\n", kRecords,
              static_cast<unsigned long long>(shared->final_epoch.load()),
              static_cast<unsigned long long>(shared->final_count.load()));
  EXPECT_GT(shared->final_epoch.load(), 10u) << "the writer reset too rarely for the test to mean much";
  for (int i = 0; i < kReaders; ++i) {
    std::printf("reader %d: %llu snapshots, %llu records verified, %llu epochs seen\n", i,
                static_cast<unsigned long long>(shared->snapshots[i].load()),
                static_cast<unsigned long long>(shared->records_checked[i].load()),
                static_cast<unsigned long long>(shared->epochs_seen[i].load()));
    EXPECT_GE(shared->snapshots[i].load(), 1u);
  }
  // The final state as this process sees it.
  auto region = open_region(file.path(), false);
  ASSERT_NE(region, nullptr);
  std::vector<std::byte> buf(kCapacity);
  uint64_t generation = 0;
  auto n = region->read(kPartition, 0, buf, &generation);
  ASSERT_TRUE(n.ok()) << n.error().message;
  uint64_t records = 0;
  EXPECT_EQ(verify(std::span(buf).first(*n), (generation - generation0) / 2, &records), "");
  EXPECT_EQ(records, shared->final_count.load());
  EXPECT_EQ((generation - generation0) / 2, shared->final_epoch.load());
  auto s = region->stat(kPartition);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->claimed) << "the writer released its claim on exit";
  ::munmap(mem, sizeof(Shared));
}

}  // namespace
}  // namespace ivshmfs::test
