// SPDX-License-Identifier: MIT
// Readers in threads of the owner's own process (as the daemon's FUSE
// threads are) while the owner appends and resets: every read and every view
// that the generation check accepts holds whole records of one generation.
// In the ThreadSanitizer tree this is also the program that shows the
// seqlock's copy racing the writer's copy after a reset (see docs/security.md).
#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"
#include "process_support.hpp"
#include "records.hpp"

namespace ivshmfs::faulttest {
namespace {

using namespace std::chrono_literals;

TEST(ThreadedReaders, ReadsAndViewsHoldOneGenerationWhileTheOwnerResets) {
  const std::string path = "/dev/shm/ivshmfs-fault-threads-" + std::to_string(::getpid());
  struct Unlink {
    std::string p;
    ~Unlink() { ::unlink(p.c_str()); }
  } unlink_region{path};
  RegionOpenOptions o;
  o.writable = true;
  o.create = true;
  o.create_size = 1 << 20;
  o.create_partitions = 2;
  auto opened = Region::open_path(path, o);
  ASSERT_TRUE(opened) << opened.error().message;
  auto region = std::move(opened).value();
  auto claimed = PartitionWriter::claim(region, 0);
  ASSERT_TRUE(claimed) << claimed.error().message;
  auto writer = std::move(claimed).value();

  std::atomic<bool> stop{false};
  std::mutex failure_mutex;
  std::string failure;
  std::atomic<uint64_t> checked{0};
  auto fail = [&](const std::string& what) {
    std::lock_guard lock(failure_mutex);
    if (failure.empty()) failure = what;
    stop = true;
  };
  std::vector<std::thread> readers;
  readers.emplace_back([&] {
    std::vector<std::byte> buffer(1 << 20);
    while (!stop) {
      uint64_t generation = 0;
      auto n = region->read(0, 0, buffer, &generation);
      if (!n) {
        if (n.error().code != Errc::busy) fail("read: " + n.error().message);
        continue;
      }
      std::string error;
      parse_records({buffer.data(), *n}, generation, error);
      if (!error.empty()) fail("read, generation " + std::to_string(generation) + ": " + error);
      ++checked;
    }
  });
  readers.emplace_back([&] {
    std::vector<std::byte> copy;
    while (!stop) {
      auto v = region->view(0, 0, SIZE_MAX);
      if (!v) continue;
      copy.assign(v->bytes.begin(), v->bytes.end());
      if (!region->generation_unchanged(0, v->generation)) continue;  // a reset raced the copy: discard it
      std::string error;
      parse_records(copy, v->generation, error);
      if (!error.empty()) fail("view, generation " + std::to_string(v->generation) + ": " + error);
      ++checked;
    }
  });

  std::vector<std::byte> record(kMaxRecord);
  uint64_t seq = 1;
  uint64_t length = 0;
  uint64_t generation = region->snapshot(0)->generation;
  const uint64_t capacity = writer->partition().capacity;
  const auto until = std::chrono::steady_clock::now() + run_length(3s);
  for (uint64_t i = 0; !stop && std::chrono::steady_clock::now() < until; ++i) {
    const std::size_t size = kHeaderSize + (i * 7919) % 3000;
    if (i % 50 == 0 || capacity - length < size) {
      auto r = writer->reset();
      ASSERT_TRUE(r) << r.error().message;
      generation = region->snapshot(0)->generation;
      seq = 1;
      length = 0;
      continue;
    }
    make_record({record.data(), size}, generation, seq++, 1);
    auto n = writer->append({record.data(), size});
    ASSERT_TRUE(n && *n == size) << (n ? "short append" : n.error().message);
    length += size;
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(failure, "");
  EXPECT_GT(checked.load(), 0U) << "the readers checked nothing";
}

}  // namespace
}  // namespace ivshmfs::faulttest
