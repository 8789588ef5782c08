// SPDX-License-Identifier: MIT
// The C API (ivshmfs.h): return conventions, errors with messages, appends,
// reads, resets and stats through handles.
#include "ivshmfs/ivshmfs.h"

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint64_t kSize = 5 * IVSHMFS_PAGE_SIZE;  // metadata + 4 partitions of 4 KiB

ivshmfs_open_options options_for(const std::string& path, uint32_t flags, int32_t id) {
  ivshmfs_open_options o{};
  o.backend = path.c_str();
  o.flags = flags;
  o.id = id;
  o.create_size = kSize;
  o.create_partitions = 4;
  return o;
}

struct HandleCloser {
  void operator()(ivshmfs_region* h) const { ivshmfs_close(h); }
};
using Handle = std::unique_ptr<ivshmfs_region, HandleCloser>;

Handle open_handle(const std::string& path, uint32_t flags, int32_t id) {
  auto o = options_for(path, flags, id);
  ivshmfs_region* h = nullptr;
  const int r = ivshmfs_open(&o, &h);
  EXPECT_EQ(r, 0) << "ivshmfs_open: " << ivshmfs_last_error();
  if (r == 0) {
    EXPECT_NE(h, nullptr);
  }
  return Handle(h);
}

// The header promises thread-safe handles: threads appending through one
// handle never interleave inside a record, and every record lands.
TEST(CApi, ThreadsAppendingThroughOneHandleNeverInterleave) {
  TempFile file("capi-threads");
  Handle w = open_handle(file.path(), IVSHMFS_OPEN_WRITE | IVSHMFS_OPEN_CREATE, 1);
  ASSERT_NE(w, nullptr);
  constexpr int kThreads = 4;
  constexpr std::size_t kRecord = 16;
  constexpr int kPerThread = 4096 / kRecord / kThreads;  // fills the 4 KiB partition exactly
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string record(kRecord, static_cast<char>('a' + t));
      for (int i = 0; i < kPerThread; ++i) {
        if (ivshmfs_append(w.get(), record.data(), record.size()) != static_cast<ssize_t>(kRecord)) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0) << ivshmfs_last_error();
  std::string all(4096, '\0');
  ASSERT_EQ(ivshmfs_read(w.get(), 1, 0, all.data(), all.size()), 4096);
  int count[kThreads] = {};
  for (std::size_t off = 0; off < all.size(); off += kRecord) {
    const char c = all[off];
    ASSERT_GE(c, 'a');
    ASSERT_LT(c, 'a' + kThreads);
    EXPECT_EQ(all.substr(off, kRecord), std::string(kRecord, c)) << "records interleaved at " << off;
    ++count[c - 'a'];
  }
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(count[t], kPerThread);
}

TEST(CApi, CreateAppendReadStatReset) {
  TempFile file("capi");
  Handle w = open_handle(file.path(), IVSHMFS_OPEN_WRITE | IVSHMFS_OPEN_CREATE, 2);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(ivshmfs_partition_count(w.get()), 4u);
  EXPECT_EQ(ivshmfs_own_id(w.get()), 2);
  EXPECT_STREQ(ivshmfs_last_error(), "") << "no error after a successful call";

  const char data[] = {'a', '\0', 'b', '\0', 'c'};
  EXPECT_EQ(ivshmfs_append(w.get(), data, sizeof data), 5);
  EXPECT_EQ(ivshmfs_append(w.get(), nullptr, 0), 0);
  EXPECT_EQ(ivshmfs_append(w.get(), "def", 3), 3);

  Handle r = open_handle(file.path(), 0, IVSHMFS_ID_FROM_HOSTNAME);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ivshmfs_own_id(r.get()), -1) << "a reader opened without an id has none";
  char buf[64] = {};
  EXPECT_EQ(ivshmfs_read(r.get(), 2, 0, buf, sizeof buf), 8);
  EXPECT_EQ(std::memcmp(buf, "a\0b\0cdef", 8), 0);
  EXPECT_EQ(ivshmfs_read(r.get(), 2, 6, buf, sizeof buf), 2);
  EXPECT_EQ(std::memcmp(buf, "ef", 2), 0);
  EXPECT_EQ(ivshmfs_read(r.get(), 2, 8, buf, sizeof buf), 0) << "read at the end";
  EXPECT_EQ(ivshmfs_read(r.get(), 2, 100, buf, sizeof buf), 0) << "read past the end";
  EXPECT_EQ(ivshmfs_read(r.get(), 2, 0, buf, 3), 3) << "read limited by the buffer";

  ivshmfs_partition_stat st{};
  ASSERT_EQ(ivshmfs_stat(r.get(), 2, &st), 0) << ivshmfs_last_error();
  EXPECT_EQ(st.id, 2u);
  EXPECT_EQ(st.length, 8u);
  EXPECT_EQ(st.capacity, IVSHMFS_PAGE_SIZE);
  EXPECT_EQ(st.claimed, 1u);
  EXPECT_EQ(st.alive, 1u);
  EXPECT_EQ(st.owner_pid, static_cast<uint64_t>(::getpid()));
  EXPECT_NE(st.last_write_ns, 0u);
  const uint64_t generation = st.generation;

  EXPECT_EQ(ivshmfs_reset(w.get()), 0) << ivshmfs_last_error();
  ASSERT_EQ(ivshmfs_stat(r.get(), 2, &st), 0);
  EXPECT_EQ(st.length, 0u);
  EXPECT_EQ(st.generation, generation + 2);

  // Fill: a short append, then -ENOSPC with a message.
  std::vector<char> big(IVSHMFS_PAGE_SIZE + 100, 'x');
  EXPECT_EQ(ivshmfs_append(w.get(), big.data(), big.size()), static_cast<ssize_t>(IVSHMFS_PAGE_SIZE));
  EXPECT_EQ(ivshmfs_append(w.get(), "y", 1), -ENOSPC);
  EXPECT_NE(std::string(ivshmfs_last_error()).find("full"), std::string::npos) << ivshmfs_last_error();

  w.reset();  // close releases the claim
  ASSERT_EQ(ivshmfs_stat(r.get(), 2, &st), 0);
  EXPECT_EQ(st.claimed, 0u);
}

TEST(CApi, ErrorsAreNegativeErrnoWithAMessage) {
  TempFile file("capi-err");
  ivshmfs_region* h = nullptr;
  // A missing file without CREATE.
  auto o = options_for(file.path(), 0, 0);
  EXPECT_LT(ivshmfs_open(&o, &h), 0);
  EXPECT_EQ(h, nullptr);
  EXPECT_NE(std::string(ivshmfs_last_error()).find(file.path()), std::string::npos) << ivshmfs_last_error();
  // NULL arguments.
  EXPECT_EQ(ivshmfs_open(nullptr, &h), -EINVAL);
  EXPECT_EQ(ivshmfs_open(&o, nullptr), -EINVAL);
  EXPECT_NE(std::string(ivshmfs_last_error()), "");

  // A blank file is not formatted, unless CREATE formats it.
  {
    TempFile blank("capi-blank", static_cast<long long>(kSize));
    auto ob = options_for(blank.path(), 0, 0);
    EXPECT_EQ(ivshmfs_open(&ob, &h), -EUCLEAN);
    EXPECT_NE(std::string(ivshmfs_last_error()).find("not formatted"), std::string::npos) << ivshmfs_last_error();
    ob.flags = IVSHMFS_OPEN_CREATE;
    EXPECT_EQ(ivshmfs_open(&ob, &h), 0) << ivshmfs_last_error();
    ivshmfs_close(h);
    h = nullptr;
  }

  Handle w = open_handle(file.path(), IVSHMFS_OPEN_WRITE | IVSHMFS_OPEN_CREATE, 1);
  ASSERT_NE(w, nullptr);
  Handle r = open_handle(file.path(), 0, 1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ivshmfs_own_id(r.get()), 1);
  char buf[8];
  EXPECT_EQ(ivshmfs_append(r.get(), "x", 1), -EBADF) << "append without WRITE";
  EXPECT_NE(std::string(ivshmfs_last_error()).find("IVSHMFS_OPEN_WRITE"), std::string::npos);
  EXPECT_EQ(ivshmfs_reset(r.get()), -EBADF);
  EXPECT_EQ(ivshmfs_read(r.get(), 9, 0, buf, sizeof buf), -ENOENT) << "read of a missing partition";
  EXPECT_NE(std::string(ivshmfs_last_error()).find("no partition 9"), std::string::npos) << ivshmfs_last_error();
  ivshmfs_partition_stat st{};
  EXPECT_EQ(ivshmfs_stat(r.get(), 9, &st), -ENOENT);
  EXPECT_EQ(ivshmfs_stat(r.get(), 1, nullptr), -EINVAL);
  EXPECT_EQ(ivshmfs_stat(nullptr, 1, &st), -EINVAL);
  EXPECT_EQ(ivshmfs_read(nullptr, 1, 0, buf, sizeof buf), -EINVAL);
  EXPECT_EQ(ivshmfs_read(r.get(), 1, 0, nullptr, 1), -EINVAL);
  EXPECT_EQ(ivshmfs_append(nullptr, "x", 1), -EINVAL);
  EXPECT_EQ(ivshmfs_append(w.get(), nullptr, 1), -EINVAL);
  EXPECT_EQ(ivshmfs_reset(nullptr), -EINVAL);
  EXPECT_EQ(ivshmfs_partition_count(nullptr), 0u);
  EXPECT_EQ(ivshmfs_own_id(nullptr), -1);
  ivshmfs_close(nullptr);

  // A second writer for the same partition: -EBUSY naming the owner; FORCE takes it.
  auto o2 = options_for(file.path(), IVSHMFS_OPEN_WRITE, 1);
  EXPECT_EQ(ivshmfs_open(&o2, &h), -EBUSY);
  EXPECT_NE(std::string(ivshmfs_last_error()).find("pid " + std::to_string(::getpid())), std::string::npos)
      << ivshmfs_last_error();
  o2.flags |= IVSHMFS_OPEN_FORCE;
  ASSERT_EQ(ivshmfs_open(&o2, &h), 0) << ivshmfs_last_error();
  Handle forced(h);
  EXPECT_EQ(ivshmfs_append(w.get(), "x", 1), -EACCES) << "the displaced handle may not append";
  EXPECT_EQ(ivshmfs_append(forced.get(), "x", 1), 1);
  // An id with no partition.
  auto o3 = options_for(file.path(), IVSHMFS_OPEN_WRITE, 17);
  EXPECT_EQ(ivshmfs_open(&o3, &h), -ENOENT);
  EXPECT_NE(std::string(ivshmfs_last_error()).find("no partition 17"), std::string::npos) << ivshmfs_last_error();
}

// The last error is per thread.
TEST(CApi, LastErrorIsPerThread) {
  ivshmfs_region* h = nullptr;
  EXPECT_EQ(ivshmfs_open(nullptr, &h), -EINVAL);
  const std::string mine = ivshmfs_last_error();
  std::string theirs = "unset";
  std::thread([&] { theirs = ivshmfs_last_error(); }).join();
  EXPECT_EQ(theirs, "");
  EXPECT_EQ(std::string(ivshmfs_last_error()), mine);
}

}  // namespace
}  // namespace ivshmfs::test
