// SPDX-License-Identifier: MIT
// The 2016 report's API (api2016.h): init / readFromMap / writeFromMap /
// shutdownMap plus readFromMapN, setVmId and mapPartitionSize. The API keeps
// one region per process, so every test runs in a forked child of its own.
#include "ivshmfs/api2016.h"

#include <sched.h>

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr int kFileSize = 3 * IVSHMFS_PAGE_SIZE;  // metadata + two partitions of 4 KiB

#define CHECK(cond, what)                                                                    \
  do {                                                                                       \
    if (!(cond))                                                                             \
      return std::string(what) + " (" #cond ", errno " + std::to_string(errno) + ", line " + \
             std::to_string(__LINE__) + ")";                                                 \
  } while (0)

std::string read_partition(const std::string& path, uint32_t id) {
  auto region = Region::open_path(path, RegionOpenOptions{});
  if (!region.ok()) return "<" + region.error().message + ">";
  std::vector<std::byte> buf(1 << 16);
  auto n = (*region)->read(id, 0, buf);
  if (!n.ok()) return "<" + n.error().message + ">";
  return as_string(std::span(buf).first(*n));
}

TEST(Api2016, InitWriteReadShutdown) {
  TempFile file("api2016");
  EXPECT_CHILD_OK(run_in_child([&]() -> std::string {
    char name[256];
    std::snprintf(name, sizeof name, "%s", file.path().c_str());
    shared_mem mem{name, kFileSize};
    char buf[IVSHMFS_PAGE_SIZE + 1];
    errno = 0;
    CHECK(readFromMap(buf, 1) == -1 && errno == ENOTCONN, "readFromMap before init");
    CHECK(writeFromMap(const_cast<char*>("x")) == -1 && errno == ENOTCONN, "writeFromMap before init");
    CHECK(shutdownMap() == -1 && errno == ENOTCONN, "shutdownMap before init");
    CHECK(setVmId(-1) == -1 && errno == EINVAL, "setVmId(-1)");
    CHECK(setVmId(1) == 1, "setVmId(1)");
    CHECK(init(nullptr) == -1 && errno == EINVAL, "init(NULL)");
    shared_mem negative{name, -1};
    CHECK(init(&negative) == -1 && errno == EINVAL, "init with a negative size");
    CHECK(init(&mem) == 1, "init");
    CHECK(init(&mem) == -1 && errno == EALREADY, "init twice");
    CHECK(mapPartitionSize() == IVSHMFS_PAGE_SIZE, "mapPartitionSize");

    CHECK(writeFromMap(const_cast<char*>("hello")) == 5, "writeFromMap returns the bytes written");
    CHECK(writeFromMap(const_cast<char*>(" world")) == 6, "second writeFromMap");
    CHECK(writeFromMap(const_cast<char*>("")) == -1 && errno == EINVAL, "an empty string");
    CHECK(writeFromMap(nullptr) == -1 && errno == EINVAL, "writeFromMap(NULL)");

    std::memset(buf, 'Z', sizeof buf);
    CHECK(readFromMap(buf, 1) == 12, "readFromMap returns length + 1");
    CHECK(std::strcmp(buf, "hello world") == 0, std::string("readFromMap gave '") + buf + "'");
    CHECK(readFromMap(buf, 0) == 1 && buf[0] == '\0', "an empty partition reads as an empty string");
    CHECK(readFromMapN(buf, 4, 1) == 4 && std::strcmp(buf, "hel") == 0, "readFromMapN truncates and terminates");
    CHECK(readFromMapN(buf, 1, 1) == 1 && buf[0] == '\0', "readFromMapN with room for the NUL only");
    CHECK(readFromMapN(buf, 0, 1) == -1 && errno == EINVAL, "readFromMapN with no room");
    CHECK(readFromMap(nullptr, 1) == -1 && errno == EINVAL, "readFromMap(NULL)");
    CHECK(readFromMap(buf, -1) == -1 && errno == EINVAL, "readFromMap of VM -1");
    CHECK(readFromMap(buf, 5) == -1 && errno == ENOENT, "readFromMap of a VM with no partition");

    // The partition fills: writes are short, then fail.
    std::string big(IVSHMFS_PAGE_SIZE, 'b');
    CHECK(writeFromMap(big.data()) == static_cast<int>(IVSHMFS_PAGE_SIZE - 11), "short write when filling");
    CHECK(writeFromMap(const_cast<char*>("more")) == -1 && errno == ENOSPC, "write to a full partition");
    CHECK(readFromMap(buf, 1) == static_cast<int>(IVSHMFS_PAGE_SIZE) + 1, "read of a full partition");

    CHECK(shutdownMap() == 1, "shutdownMap");
    CHECK(shutdownMap() == -1 && errno == ENOTCONN, "shutdownMap twice");
    CHECK(readFromMap(buf, 1) == -1 && errno == ENOTCONN, "readFromMap after shutdownMap");
    CHECK(mapPartitionSize() == 0, "mapPartitionSize after shutdownMap");
    return {};
  }));
  // init created and formatted the missing file with the report's two partitions.
  auto region = open_region(file.path(), false);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->info().partition_count, 2u);
  EXPECT_EQ(region->info().region_size, static_cast<uint64_t>(kFileSize));
  auto s = region->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->claimed) << "shutdownMap released the partition";
}

TEST(Api2016, FirstWriteAfterInitStartsAfresh) {
  TempFile file("api2016-fresh");
  format_file(file.path(), kFileSize, 2);
  {
    auto region = open_region(file.path(), true);
    auto w = PartitionWriter::claim(region, 1);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->append(as_bytes("old data")).ok());
    auto w0 = PartitionWriter::claim(region, 0);
    ASSERT_TRUE(w0.ok());
    ASSERT_TRUE((*w0)->append(as_bytes("vm0 data")).ok());
  }
  EXPECT_CHILD_OK(run_in_child([&]() -> std::string {
    std::string name = file.path();
    shared_mem mem{name.data(), kFileSize};
    char buf[IVSHMFS_PAGE_SIZE + 1];
    CHECK(setVmId(1) == 1, "setVmId");
    CHECK(init(&mem) == 1, "init");
    CHECK(readFromMap(buf, 1) == 9 && std::strcmp(buf, "old data") == 0, "init alone keeps the data");
    CHECK(writeFromMap(const_cast<char*>("new")) == 3, "first write");
    CHECK(readFromMap(buf, 1) == 4 && std::strcmp(buf, "new") == 0,
          std::string("the first write after init starts afresh, read '") + buf + "'");
    CHECK(writeFromMap(const_cast<char*>(" more")) == 5, "second write");
    CHECK(readFromMap(buf, 1) == 9 && std::strcmp(buf, "new more") == 0, "the second write appends");
    CHECK(readFromMap(buf, 0) == 9 && std::strcmp(buf, "vm0 data") == 0, "other VMs' data untouched");
    CHECK(shutdownMap() == 1, "shutdownMap");
    CHECK(init(&mem) == 1, "init again");
    CHECK(readFromMap(buf, 1) == 9, "data kept across shutdownMap and init");
    CHECK(writeFromMap(const_cast<char*>("again")) == 5, "write after the second init");
    CHECK(readFromMap(buf, 1) == 6 && std::strcmp(buf, "again") == 0, "a new init starts afresh again");
    CHECK(shutdownMap() == 1, "shutdownMap");
    return {};
  }));
  EXPECT_EQ(read_partition(file.path(), 1), "again");
  EXPECT_EQ(read_partition(file.path(), 0), "vm0 data");
}

TEST(Api2016, TwoVmsExchangeData) {
  TempFile file("api2016-two");
  auto vm = [&](int id, const char* message) {
    return run_in_child([&, id, message]() -> std::string {
      std::string name = file.path();
      shared_mem mem{name.data(), kFileSize};
      CHECK(setVmId(id) == 1, "setVmId");
      CHECK(init(&mem) == 1, "init");
      CHECK(writeFromMap(const_cast<char*>(message)) == static_cast<int>(std::strlen(message)), "write");
      CHECK(shutdownMap() == 1, "shutdownMap");
      return {};
    });
  };
  EXPECT_CHILD_OK(vm(0, "from vm0"));
  EXPECT_CHILD_OK(vm(1, "from vm1"));
  EXPECT_CHILD_OK(run_in_child([&]() -> std::string {
    std::string name = file.path();
    shared_mem mem{name.data(), kFileSize};
    char buf[IVSHMFS_PAGE_SIZE + 1];
    CHECK(setVmId(1) == 1, "setVmId");
    CHECK(init(&mem) == 1, "init");
    CHECK(readFromMap(buf, 0) == 9 && std::strcmp(buf, "from vm0") == 0, std::string("vm1 read '") + buf + "'");
    CHECK(readFromMap(buf, 1) == 9 && std::strcmp(buf, "from vm1") == 0, "own data");
    return {};  // no shutdownMap: process exit must not break anything
  }));
}

TEST(Api2016, VmIdFromEnvironment) {
  TempFile file("api2016-env");
  EXPECT_CHILD_OK(run_in_child([&]() -> std::string {
    std::string name = file.path();
    shared_mem mem{name.data(), kFileSize};
    for (const char* bad : {"x", "-3", "1x", "99999999999"}) {
      ::setenv("IVSHMFS_ID", bad, 1);
      errno = 0;
      CHECK(init(&mem) == -1 && errno == EINVAL, std::string("IVSHMFS_ID='") + bad + "' accepted");
    }
    ::setenv("IVSHMFS_ID", "1", 1);
    CHECK(init(&mem) == 1, "init with IVSHMFS_ID=1");
    CHECK(writeFromMap(const_cast<char*>("by env")) == 6, "write");
    CHECK(shutdownMap() == 1, "shutdownMap");
    // setVmId wins over the environment.
    CHECK(setVmId(0) == 1, "setVmId");
    CHECK(init(&mem) == 1, "init with setVmId(0)");
    CHECK(writeFromMap(const_cast<char*>("by setVmId")) == 10, "write");
    CHECK(shutdownMap() == 1, "shutdownMap");
    return {};
  }));
  EXPECT_EQ(read_partition(file.path(), 1), "by env");
  EXPECT_EQ(read_partition(file.path(), 0), "by setVmId");
}

TEST(Api2016, InitRefusedWhileAnotherOwnerIsLive) {
  TempFile file("api2016-busy");
  format_file(file.path(), kFileSize, 2);
  auto region = open_region(file.path(), true);
  auto w = PartitionWriter::claim(region, 1);
  ASSERT_TRUE(w.ok());
  EXPECT_CHILD_OK(run_in_child([&]() -> std::string {
    std::string name = file.path();
    shared_mem mem{name.data(), kFileSize};
    CHECK(setVmId(1) == 1, "setVmId");
    errno = 0;
    CHECK(init(&mem) == -1 && errno == EBUSY, "init while the partition has a live owner");
    CHECK(setVmId(7) == 1, "setVmId");
    CHECK(init(&mem) == -1 && errno == ENOENT, "init for a VM with no partition");
    return {};
  }));
}

// init() formats only a blank file: a region that lost its magic (or has a
// bad one, or another version) keeps every byte, and init says why it fails.
TEST(Api2016, InitNeverFormatsARegionThatIsNotBlank) {
  const std::pair<uint64_t, uint64_t> damages[] = {{0, 0}, {0, 0x1122334455667788ULL}, {8, 99}};
  for (const auto& [offset, value] : damages) {
    TempFile file("api2016-damaged");
    format_file(file.path(), kFileSize, 2);
    {
      const int fd = ::open(file.path().c_str(), O_WRONLY | O_CLOEXEC);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::pwrite(fd, &value, sizeof value, static_cast<off_t>(offset)), 8);
      ::close(fd);
    }
    const uint64_t before = file_checksum(file.path());
    EXPECT_CHILD_OK(run_in_child([&]() -> std::string {
      std::string name = file.path();
      shared_mem mem{name.data(), kFileSize};
      CHECK(setVmId(1) == 1, "setVmId");
      CHECK(init(&mem) == -1, "init of a damaged region");
      return {};
    }));
    EXPECT_EQ(file_checksum(file.path()), before) << "init overwrote a region damaged at offset " << offset;
  }
}

// The VM id from the hostname, in a UTS namespace of the child's own.
TEST(Api2016, VmIdFromHostname) {
  TempFile file("api2016-host");
  const std::pair<const char*, int> cases[] = {{"vm1", 1}, {"vm0-web", 0}, {"1_alpha", 1}, {"web", -1}};
  for (const auto& [hostname, expected] : cases) {
    auto outcome = run_in_child([&, host = hostname, id = expected]() -> std::string {
      ::unsetenv("IVSHMFS_ID");
      if (::unshare(CLONE_NEWUTS) != 0) return std::string("SKIP: unshare(CLONE_NEWUTS): ") + std::strerror(errno);
      CHECK(::sethostname(host, std::strlen(host)) == 0, "sethostname");
      std::string name = file.path();
      shared_mem mem{name.data(), kFileSize};
      if (id < 0) {
        errno = 0;
        CHECK(init(&mem) == -1 && errno == EINVAL, std::string("hostname '") + host + "' gave a VM id");
        return {};
      }
      CHECK(init(&mem) == 1, std::string("init on hostname '") + host + "'");
      const std::string message = std::string("from ") + host;
      CHECK(writeFromMap(const_cast<char*>(message.c_str())) > 0, "write");
      CHECK(shutdownMap() == 1, "shutdownMap");
      return {};
    });
    if (outcome.output.starts_with("SKIP")) GTEST_SKIP() << outcome.output;
    EXPECT_CHILD_OK(outcome);
    if (expected >= 0) {
      EXPECT_EQ(read_partition(file.path(), static_cast<uint32_t>(expected)), std::string("from ") + hostname);
    }
  }
}

}  // namespace
}  // namespace ivshmfs::test
